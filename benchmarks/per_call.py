"""Per-call times of batch norm and layer norm at small and mid sizes against PyTorch
(both allocating their outputs), with the time of a copy of the same array: the kernels
issue's per-call cases. Run: python benchmarks/per_call.py (needs torch).
"""
from cybn.benchmark.timing import median_time
import numpy as np, torch, cybn
torch.set_num_threads(2)
def med(f, n=400):
    """Median time of f in us (cybn's benchmark timer, 50 warm-up calls)."""
    return median_time(f, n, warmup=50) * 1e6


rng=np.random.default_rng(0)
print("shape               infer cybn/torch      train cybn/torch     backward cybn/torch   copy")
for shape,axis in [((3,5,2,3),1),((6,48,4,5),1),((12,640),1),((64,512),1),((8,16,8,8),1),((32,64,14,14),1),((32,14,14,64),-1),((12,160,20,20),1)]:
    x=rng.standard_normal(shape).astype(np.float32); C=shape[axis]
    rm=np.zeros(C,np.float32); rv=np.ones(C,np.float32); w=rv.copy(); b=rm.copy(); dy=x.copy()
    tx=torch.from_numpy(x)
    if axis==-1: tx=torch.from_numpy(np.ascontiguousarray(np.moveaxis(x,-1,1))).contiguous(memory_format=torch.channels_last)
    trm,trv,tw,tb=[torch.from_numpy(a.copy()) for a in (rm,rv,w,b)]
    _,m,i=cybn.batch_norm_train(x,w,b,axis=axis)
    txg=tx.detach().clone().requires_grad_(); twg=tw.clone().requires_grad_(); tbg=tb.clone().requires_grad_()
    ty=torch.nn.functional.batch_norm(txg,None,None,twg,tbg,training=True); tdy=torch.ones_like(ty)
    r=[]
    for _ in range(3):
        r.append([med(lambda: cybn.batch_norm_infer(x,rm,rv,w,b,axis=axis)), med(lambda: torch.nn.functional.batch_norm(tx,trm,trv,tw,tb,training=False)),
                  med(lambda: cybn.batch_norm_train(x,w,b,axis=axis)), med(lambda: torch.nn.functional.batch_norm(tx,None,None,tw,tb,training=True)),
                  med(lambda: cybn.batch_norm_backward(dy,x,w,m,i,axis=axis)), med(lambda: torch.autograd.grad(ty,(txg,twg,tbg),tdy,retain_graph=True)),
                  med(lambda: x.copy())])
    r=np.median(np.array(r),axis=0)
    print(f"{str(shape):18s} {r[0]:7.1f}/{r[1]:7.1f}   {r[2]:7.1f}/{r[3]:7.1f}   {r[4]:7.1f}/{r[5]:7.1f}   {r[6]:6.1f}")
D=768
for M in (5,64,512):
    x=rng.standard_normal((M,D)).astype(np.float32); w=np.ones(D,np.float32); tx=torch.from_numpy(x); tw=torch.from_numpy(w)
    print(f"layer_norm {M}x{D}: cybn {med(lambda: cybn.layer_norm(x,D,w,w)):.1f} torch {med(lambda: torch.nn.functional.layer_norm(tx,(D,),tw,tw)):.1f}")
x=rng.standard_normal((32*1024,)).astype(np.float32).reshape(32,1024)
relu=cybn.ReLU() if hasattr(cybn,'ReLU') else None
print("ReLU layer 32K:", round(med(lambda: relu(x)),1), "torch", round(med(lambda: torch.relu(torch.from_numpy(x))),1))
