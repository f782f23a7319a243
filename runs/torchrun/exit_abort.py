"""The torchrun exit abort, reduced (README, Several GPUs or processes; issue 11 item 6).

Two gloo processes train DDP on one Linear for 5 steps and return from main. About 1 run in 60 aborts as the
interpreter exits ("terminate called without an active exception"): gloo's threads still hold work objects whose
tensors are freed during finalization. With EXIT=os_exit each process ends with os._exit(0) after flushing its
streams, as train_hf.py's __main__ does, so nothing is finalized.
PENDING=1 leaves an all_reduce of 16 MB in flight at the end, the same abort made likely.
Usage: [PENDING=1] EXIT=return|os_exit torchrun --standalone --nproc_per_node 2 runs/torchrun/exit_abort.py
"""
import os, sys
import torch, torch.distributed as dist

dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 16))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(5):
    optimizer.zero_grad()
    model(torch.randn(8, 16)).square().mean().backward()
    optimizer.step()
if os.environ.get("PENDING"):  # the stress form: a collective still in flight as the process ends
    dist.all_reduce(torch.ones(1 << 22), async_op=True)
print(f"rank {dist.get_rank()} done", flush=True)
if os.environ.get("EXIT") == "os_exit":
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
