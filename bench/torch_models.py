"""PyTorch side of bench/models.c: the same Fashion-MNIST MLP and CNN, the same
cases in the same order, one line of seconds per case (see bench_time in
bench_util.h: warm calls, then the median of five blocks).

    python3 bench/torch_models.py --threads N
"""
import argparse
import time

import torch
from torch import nn

BATCHES = 20  # train steps per timed call, as in models.c


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def bench_time(fn):
    best = min(_timed(fn, 1) for _ in range(5))
    reps = min(100000, int(0.03 / (best + 1e-9)) + 1)
    blocks = sorted(_timed(fn, reps) / reps for _ in range(5))
    return blocks[2]


def _timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - t0


def train_case(make, image_shape, optimizer):
    torch.manual_seed(0)
    model = make()
    opt = optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.rand(BATCHES, 128, *image_shape)
    ys = torch.randint(0, 10, (BATCHES, 128))

    def epoch():
        for i in range(BATCHES):
            opt.zero_grad()
            loss = loss_fn(model(xs[i]), ys[i])
            loss.backward()
            opt.step()

    return bench_time(epoch) / BATCHES


def infer_case(make, image_shape, batch):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(batch, *image_shape)

    def run():
        with torch.no_grad():
            model(x)

    return bench_time(run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sgd = lambda p: torch.optim.SGD(p, lr=0.01)
    adam = lambda p: torch.optim.Adam(p, lr=0.001)
    flat, img = (28, 28), (1, 28, 28)
    for t in (train_case(mlp, flat, sgd), train_case(cnn, img, adam), infer_case(mlp, flat, 1),
              infer_case(mlp, flat, 128), infer_case(cnn, img, 1), infer_case(cnn, img, 128)):
        print(f"{t:.9e}", flush=True)


if __name__ == "__main__":
    main()
