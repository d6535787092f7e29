"""The control API over HTTP: the basics (errors, auth, bodies, deadlines), the routes, metrics and the web
page with its MJPEG preview."""
