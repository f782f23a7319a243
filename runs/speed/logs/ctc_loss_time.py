"""F.ctc_loss forward+backward at a micro-batch's shapes (8 clips, 100 frames, 30 targets, V = 20), 2 threads: ms per call."""
import torch, time, torch.nn.functional as F
torch.set_num_threads(2)
B,T,V,S=8,100,20,30
x=torch.randn(T,B,V,requires_grad=True)
tg=torch.randint(3,V,(B*S,))
il=torch.full((B,),T); tl=torch.full((B,),S)
for dev in ["cpu"]:
  for it in range(3):
    t=time.perf_counter()
    for _ in range(50):
      lp=x.log_softmax(-1)
      l=F.ctc_loss(lp,tg,il,tl,blank=0,reduction="none",zero_infinity=True).sum()
      l.backward()
    print((time.perf_counter()-t)/50*1000,"ms")
