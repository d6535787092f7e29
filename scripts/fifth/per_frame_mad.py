import sys

# Run from the repository root: python scripts/fifth/<name>.py ARGS (figures and commands: BENCHMARKS.md, fifth session).
import numpy as np

from rvm_live.tools import quality as q
from rvm_live.tools import quality_data as data

W,H = 1280,720
N = int(sys.argv[1])
clips,_ = data.load_clips(W,H,N)
for px in (480, 256):
    r = round(px/W,4)
    run = q._Model(q.Setting("openvino-bf16","fast",r))
    for c in clips:
        run.reset()
        errs=[]
        for i,f in enumerate(c.frames):
            a,_ = run.step(f)
            errs.append(np.abs(a.astype(np.float32)/255 - c.alpha[i].astype(np.float32)/255).mean()*1e3)
        print(px, c.name, " ".join(f"{e:.1f}" for e in errs), flush=True)
