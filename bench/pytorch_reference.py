#!/usr/bin/env python3
"""The PyTorch side of `runner bench`: the same CIFAR net, batch, optimiser step and thread count,
timed the same way, printing the same JSON fields as `runner bench --json`.

The nets mirror plugins/plain.rs and plugins/resnet.rs (He et al. 2015 §4.2; pre-activation from
He et al. 2016): 3x3 convolutions without bias, BatchNorm (eps 1e-5, momentum 0.1), shortcut
option A (stride-2 subsampling + zero channel padding), B or C, global average pooling and a
linear classifier. Training step: forward in train mode, cross-entropy, backward, SGD (momentum
0.9, weight decay 1e-4, lr 0.01), then reading the loss; evaluation: forward in eval mode under
no_grad. Default fp32 NCHW, as a user running PyTorch on a CPU gets it.

On a GPU (--device cuda): cudnn.benchmark on, the device synchronised before each clock reading,
peak GPU memory reported as peak_gpu_mib. PyTorch lets cuDNN round fp32 convolutions to TF32 by
default; --no-tf32 makes them strict fp32 as runner's are. --cuda-graph captures the whole
training step (forward, loss, backward, SGD) and the evaluation batch as CUDA graphs and replays
them (PyTorch's whole-network capture recipe: warm-up on a side stream, static input and target,
gradients zeroed in place).

PyTorch is a benchmark tool here, not a dependency of the runner or its tests:
    python3 -m venv torchenv && torchenv/bin/pip install torch numpy
    torchenv/bin/python bench/pytorch_reference.py --depth 20 --batch 128 --threads 2
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Unit(nn.Module):
    """A basic unit (two 3x3 convolutions), original or pre-activation, with its shortcut."""

    def __init__(self, c_in, c, stride, shortcut, preact):
        super().__init__()
        self.preact = preact
        self.shortcut_kind = shortcut
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in if preact else c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        changes = stride != 1 or c_in != c
        self.stride = stride
        self.pad = c - c_in
        self.path = "none"
        if shortcut == "A":
            self.path = "pad" if changes else "identity"
        elif shortcut == "B" and not changes:
            self.path = "identity"
        elif shortcut in ("B", "C"):
            self.path = "projection"
            layers = [nn.Conv2d(c_in, c, 1, stride, 0, bias=False)]
            if not preact:
                layers.append(nn.BatchNorm2d(c))
            self.shortcut = nn.Sequential(*layers)

    def short(self, x, proj_in):
        if self.path == "identity":
            return x
        if self.path == "pad":
            s = x[:, :, :: self.stride, :: self.stride]
            return F.pad(s, (0, 0, 0, 0, 0, self.pad))
        return self.shortcut(proj_in)

    def forward(self, x):
        if self.preact:
            pre = F.relu(self.bn1(x))
            h = self.conv1(pre)
            h = self.conv2(F.relu(self.bn2(h)))
            return h + self.short(x, pre)
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.path == "none":
            return F.relu(h)
        return F.relu(h + self.short(x, x))


class Net(nn.Module):
    def __init__(self, depth, shortcut, preact, width=16, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.preact = preact
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = None if preact else nn.BatchNorm2d(width)
        units, c_in = [], width
        for s in range(3):
            c = width << s
            for i in range(n):
                units.append(Unit(c_in, c, 2 if s > 0 and i == 0 else 1, shortcut, preact))
                c_in = c
        self.units = nn.Sequential(*units)
        self.bn_final = nn.BatchNorm2d(c_in) if preact else None
        self.linear = nn.Linear(c_in, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        h = self.conv1(x)
        if self.bn1 is not None:
            h = F.relu(self.bn1(h))
        h = self.units(h)
        if self.bn_final is not None:
            h = F.relu(self.bn_final(h))
        return self.linear(h.mean(dim=(2, 3)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["plain", "resnet"], default="resnet")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--shortcut", choices=["A", "B", "C"], default="A")
    p.add_argument("--preact", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (often PyTorch's faster CPU mode)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--cuda-graph", action="store_true", help="replay the training step and the evaluation as CUDA graphs")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 convolutions on the GPU (PyTorch allows TF32)")
    a = p.parse_args()
    if a.cuda_graph and a.device != "cuda":
        p.error("--cuda-graph needs --device cuda")
    if (a.depth - 2) % 6 != 0:
        p.error("--depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(7)

    dev = torch.device(a.device)
    gpu = a.device == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = not a.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    model = Net(a.depth, None if a.arch == "plain" else a.shortcut, a.preact).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def train_body():
        opt.zero_grad(set_to_none=not a.cuda_graph)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def eval_body():
        with torch.no_grad():
            return model(x).sum()

    if a.cuda_graph:
        # warm-up on a side stream (cuDNN's benchmark, the allocator), then one capture each
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model.train()
            for _ in range(3):
                train_body()
            model.eval()
            for _ in range(3):
                eval_body()
        torch.cuda.current_stream().wait_stream(side)
        model.train()
        train_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(train_graph):
            train_loss = train_body()
        model.eval()
        eval_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(eval_graph):
            eval_out = eval_body()

        def train_step():
            train_graph.replay()
            train_loss.item()

        def eval_step():
            eval_graph.replay()
            eval_out.item()
    else:

        def train_step():
            model.train()
            train_body().item()

        def eval_step():
            model.eval()
            eval_body().item()

    def timed(f):
        times = []
        for i in range(a.warmup + a.steps):
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            if gpu:
                torch.cuda.synchronize()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    if gpu:
        torch.cuda.reset_peak_memory_stats()

    step = timed(train_step)
    ev = timed(eval_step)
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "impl": "pytorch-graph" if a.cuda_graph else "pytorch",
                "device": a.device,
                "gpu": torch.cuda.get_device_name() if gpu else None,
                "tf32": gpu and not a.no_tf32,
                "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
                "memory_format": "channels_last" if a.channels_last else "nchw",
                "torch": torch.__version__,
                "arch": a.arch,
                "depth": a.depth,
                "trainable": params,
                "batch": a.batch,
                "threads": torch.get_num_threads(),
                "steps": a.steps,
                "train_step_ms": step * 1e3,
                "train_images_per_s": a.batch / step,
                "eval_batch_ms": ev * 1e3,
                "eval_images_per_s": a.batch / ev,
                # ru_maxrss is in KiB on Linux
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
