"""Prototype: network every k-th frame, coefficients reused on the frames between (quality only)."""
# Run from the repository root: python scripts/fifth/<name>.py ARGS (figures and commands: BENCHMARKS.md, fifth session).
import sys

import numpy as np

from rvm_live.engine.render import CoefficientRows
from rvm_live.tools import quality as q
from rvm_live.tools import quality_data as data

W,H = 1280,720
N = int(sys.argv[1]) if len(sys.argv)>1 else 16
clips,_ = data.load_clips(W,H,N)
truths = [q.prepare(c) for c in clips]
class Reuse(q._Model):
    def __init__(self, setting, every):
        super().__init__(setting); self.every=every
    def reset(self):
        super().reset(); self.i=0; self.last=None
    def step(self, frame):
        if self.i % self.every == 0:
            m = self.engine.infer([frame],[self.state]); self.last = m
        else:
            m = self.last; row = m.rows[0]
            f = np.ascontiguousarray(frame)[None]
            m.rows[0] = CoefficientRows(row.streams,row.slots,f,f.astype(np.float32),row.a,row.b)
        self.i+=1
        (p,) = self.engine.render(m,[self.plan])
        return np.ascontiguousarray(p.image[...,3]), np.ascontiguousarray(p.image[...,:3])
for px in (480, 384, 320, 256):
    r = round(px/W,4)
    for every in (1,2,3):
        s = q.Setting("openvino-bf16","fast",r)
        res = q.score(Reuse(s,every), truths)
        print(px, "every", every, {k: round(v,3) for k,v in res.items()}, flush=True)
