"""Ghost batch norm against plain batch norm, training forward + backward and forward alone
(kernels issue: ghost within 1.15x of plain). Run: python benchmarks/ghost_vs_plain.py

Prints, per shape and channel axis, the median times (ms) and ghost / plain.
"""
from cybn.benchmark.timing import median_time
import numpy as np, cybn
def med(f, n=15):
    """Median time of f in ms (cybn's benchmark timer, 3 warm-up calls)."""
    return median_time(f, n, warmup=3) * 1e3


rng=np.random.default_rng(0)
for shape,axis,gb in [((24,36,36,48),-1,8),((128,512,7,7),1,32),((24,48,36,36),1,8)]:
    x=rng.standard_normal(shape).astype(np.float32); dy=x.copy(); C=shape[axis]; w=np.ones(C,np.float32); b=np.zeros(C,np.float32)
    def plain():
        y,m,i=cybn.batch_norm_train(x,w,b,axis=axis); cybn.batch_norm_backward(dy,x,w,m,i,axis=axis)
    def ghost():
        y,m,i=cybn.batch_norm_ghost(x,w,b,ghost_batch_size=gb,axis=axis); cybn.batch_norm_ghost_backward(dy,x,w,m,i,ghost_batch_size=gb,axis=axis)
    def pf(): cybn.batch_norm_train(x,w,b,axis=axis)
    def gf(): cybn.batch_norm_ghost(x,w,b,ghost_batch_size=gb,axis=axis)
    r=[]
    for _ in range(3): r.append([med(plain),med(ghost),med(pf),med(gf)])
    r=np.median(r,axis=0)
    print(shape, axis, "fwd+bwd plain %.3f ghost %.3f ratio %.2f | fwd plain %.3f ghost %.3f ratio %.2f"%(r[0],r[1],r[1]/r[0],r[2],r[3],r[3]/r[2]))
