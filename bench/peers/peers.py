#!/usr/bin/python3
"""bench/peers: kiln against onnxruntime and PyTorch on the same ONNX files.

  python3 bench/peers/peers.py BUILD_DIR [--threads 1,2] [--rounds 3] [--models a,b]

Exports each model from PyTorch (fixed seeds, opset 13, fixed batch) with an input
and PyTorch's output into BUILD_DIR/peers/, then times, per model and thread count,
three contenders each in its own process, alternated round by round: kiln
(bench_peers: ONNX import + JIT), onnxruntime's CPU provider (ort_peer.js, Node.js
binding of onnxruntime-node 1.30.0, from npm) and PyTorch eager (this script with
--time). Every contender checks its output against PyTorch's before timing. The
binding's own per-call cost is measured on a one-op model and printed beside.
Ratios are of medians over rounds: > 1 means kiln is faster.
"""
import math, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))

def build_model(name):
    import torch, torchvision
    torch.manual_seed(0)
    nn = torch.nn
    if name.startswith("mlp"):
        m = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
        shape = (1, 1, 28, 28)
    elif name.startswith("cnn"):
        m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
        shape = (1, 1, 28, 28)
    elif name.startswith("resnet18"):
        m, shape = torchvision.models.resnet18(), (1, 3, 224, 224)
    elif name.startswith("mobilenetv2"):
        m, shape = torchvision.models.mobilenet_v2(), (1, 3, 224, 224)
    elif name.startswith("transformer"):
        m, shape = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True), (1, 128, 256)
    elif name.startswith("lstm"):
        class LSTMClassifier(nn.Module):  # Fashion-MNIST rows as a 28-step sequence
            def __init__(self):
                super().__init__()
                self.lstm, self.fc = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)
            def forward(self, x):
                return self.fc(self.lstm(x)[0][:, -1])
        m, shape = LSTMClassifier(), (1, 28, 28)
    else:
        raise SystemExit("unknown model " + name)
    batch = int(name.split("_b")[1])
    return m.eval(), (batch,) + shape[1:]

MODELS = ["mlp_b1", "mlp_b128", "cnn_b1", "cnn_b128", "resnet18_b1", "resnet18_b8", "mobilenetv2_b1", "mobilenetv2_b8",
          "transformer_b1", "lstm_b1"]

def export(name, out):
    import numpy as np, torch
    m, shape = build_model(name)
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32))
    with torch.no_grad():
        y = m(x)
    # outside no_grad: there the transformer layer takes a fused fast path ONNX cannot express
    torch.onnx.export(m, x, f"{out}/{name}.onnx", opset_version=13, input_names=["x"], output_names=["y"])
    np.save(f"{out}/{name}_x.npy", x.numpy())
    np.save(f"{out}/{name}_y.npy", y.numpy())

def export_one_op(out):  # the binding's per-call cost: y = x + 1 on 4 floats
    import numpy as np, torch
    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1
    x = torch.zeros(1, 4)
    torch.onnx.export(AddOne(), x, f"{out}/one_op_b1.onnx", opset_version=13, input_names=["x"], output_names=["y"])
    np.save(f"{out}/one_op_b1_x.npy", x.numpy())
    np.save(f"{out}/one_op_b1_y.npy", (x + 1).numpy())

def time_torch(name, out, threads):
    import numpy as np, torch
    torch.set_num_threads(threads)
    m, _ = build_model(name)
    x = torch.from_numpy(np.load(f"{out}/{name}_x.npy"))
    want = np.load(f"{out}/{name}_y.npy")
    with torch.no_grad():
        if np.abs(m(x).numpy() - want).max() > 1e-4 * max(1e-30, np.abs(want).max()):
            raise SystemExit(name + ": PyTorch does not reproduce its own output")
        best = min(timed(m, x, 1) for _ in range(5))
        reps = min(100000, int(0.03 / (best + 1e-9)) + 1)
        print("%.9e" % sorted(timed(m, x, reps) for _ in range(5))[2])

def timed(m, x, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        m(x)
    return (time.perf_counter() - t0) / reps

def contender_cmd(who, build, out, name, threads):
    files = [f"{out}/{name}.onnx", f"{out}/{name}_x.npy", f"{out}/{name}_y.npy", str(threads)]
    if who == "kiln":
        return [f"{build}/bin/bench_peers"] + files
    if who == "onnxruntime":
        return ["node", f"{HERE}/ort_peer.js"] + files
    return [sys.executable, __file__, "--time", name, out, str(threads)]

def run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(" ".join(cmd) + " failed:\n" + r.stderr)
    return float(r.stdout.split()[-1])

def vector_width():
    flags = open("/proc/cpuinfo").read()
    return "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "SSE"

def main():
    if sys.argv[1] == "--time":
        return time_torch(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    build, args = sys.argv[1], sys.argv[2:]
    opt = {"--threads": "1,2", "--rounds": "3", "--models": ",".join(MODELS)}
    for i in range(0, len(args), 2):
        opt[args[i]] = args[i + 1]
    out = f"{build}/peers"
    os.makedirs(out, exist_ok=True)
    names = opt["--models"].split(",")
    for name in names + ["one_op_b1"]:
        if not os.path.exists(f"{out}/{name}.onnx"):
            export_one_op(out) if name == "one_op_b1" else export(name, out)
    env = dict(os.environ, NODE_PATH=os.environ.get("NODE_PATH", f"{build}/node_modules"), KILN_CACHE="0")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    who = ["kiln", "onnxruntime", "pytorch"]
    for threads in map(int, opt["--threads"].split(",")):
        env["KILN_NUM_THREADS"] = str(threads)
        binding = min(run(contender_cmd("onnxruntime", build, out, "one_op_b1", threads), env) for _ in range(3))
        print(f"\n{cpu}, {vector_width()}, {threads} thread{'s' if threads > 1 else ''}: ms per call, median of "
              f"{opt['--rounds']} rounds; the Node.js binding's own cost per call: {binding * 1e3:.3f} ms (a one-op model)")
        print(f"{'model':<16} {'kiln':>9} {'onnxrt':>9} {'pytorch':>9} {'onnxrt/kiln':>12} {'pytorch/kiln':>13}")
        ratios = [[], []]
        for name in names:
            t = {w: [] for w in who}
            for _ in range(int(opt["--rounds"])):
                for w in who:
                    t[w].append(run(contender_cmd(w, build, out, name, threads), env))
            med = {w: sorted(v)[len(v) // 2] for w, v in t.items()}
            r = [med["onnxruntime"] / med["kiln"], med["pytorch"] / med["kiln"]]
            ratios[0].append(r[0]), ratios[1].append(r[1])
            print(f"{name:<16} {med['kiln']*1e3:9.3f} {med['onnxruntime']*1e3:9.3f} {med['pytorch']*1e3:9.3f} {r[0]:11.2f}x {r[1]:12.2f}x",
                  flush=True)
        gm = [math.exp(sum(map(math.log, v)) / len(v)) for v in ratios]
        print(f"{'geometric mean':<16} {'':>9} {'':>9} {'':>9} {gm[0]:11.2f}x {gm[1]:12.2f}x")

if __name__ == "__main__":
    main()
