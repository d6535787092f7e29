"""What goes behind the subject (colours, pictures, videos, blur, transparency) and the blend itself."""
