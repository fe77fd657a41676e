"""The trainers compared, one per process: `python -m benchmarks.contenders project|peer ...`.

project: the pipeline's own training code; peer: PyTorch `nn.LSTM(28, 128)` + `nn.Linear(128, 10)`.
Each trains at params.yaml's batch size with Adam 0.001 and prints one JSON object: every `--every`
iterations, its training time so far (evaluation excluded) and, with `--accuracy`, test accuracy.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from benchmarks.scratch import REPO
from pipeline.data.files import load_arrays
from pipeline.params import config
from pipeline.training import tf_options


def project(params, args, train, test) -> list[dict]:
    """The train stage's network and fit, timed by the stage's own clock of its training steps."""
    tf_options.use_onednn(params.train.onednn)  # as pipeline.train does, before TensorFlow loads
    from pipeline.training import fitting, tf_runtime
    from pipeline.training.network import build_model

    update = {"iterations": args.iterations, "log_every": args.every}
    settings = config.TrainParams.model_validate(params.train.model_dump() | update)
    tf_runtime.configure_runtime(params.seed, settings)  # as pipeline.train.run does
    network = build_model(config.network(params.model, settings.iterations))
    model, clock, rows = fitting.compile_trainer(network, settings), fitting.StepClock(), []

    def report(row: dict) -> None:
        rows.append({"iteration": int(row["iteration"]), "seconds": clock.training,
                     "accuracy": row["val_accuracy"]})  # fmt: skip

    check = test if args.accuracy else {"x": test["x"][:128], "y": test["y"][:128]}
    fitting.fit(model, train, check, settings, params.seed, report, callbacks=[clock])
    return rows


def validate(lstm, head, loss_fn, val: dict) -> tuple[float, float]:
    """Loss and accuracy on the validation split, in batches of 1,000 as the stage scores it."""
    import torch

    x, y = torch.from_numpy(val["x"]), torch.from_numpy(val["y"].astype(np.int64))
    loss = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(x), 1000):
            logits = head(lstm(x[start : start + 1000])[0][:, -1])
            loss += float(loss_fn(logits, y[start : start + 1000])) * len(logits)
            correct += float((logits.argmax(1) == y[start : start + 1000]).sum())
    return loss / len(x), correct / len(x)


def peer(params, args, train, test) -> list[dict]:
    import torch
    from torch import nn

    torch.manual_seed(params.seed)
    lstm, head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)
    with torch.no_grad():  # the reference's forget bias 1.0 (gates i, f, g, o)
        lstm.bias_ih_l0[128:256].fill_(1.0)
        lstm.bias_hh_l0[128:256].fill_(0.0)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.001)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"].astype(np.int64))
    x_test, y_test = torch.from_numpy(test["x"]), torch.from_numpy(test["y"].astype(np.int64))
    val = load_arrays(params.paths.split("val")) if args.validate else None
    generator = torch.Generator().manual_seed(params.seed)
    size = params.train.batch_size  # the same batches as the pipeline's
    order, position, rows = torch.randperm(len(x), generator=generator), 0, []
    training, started = 0.0, time.perf_counter()  # training time only: paused at each check
    for iteration in range(1, args.iterations + 1):
        if position + size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        batch = order[position : position + size]
        position += size
        output, _ = lstm(x[batch])
        loss = loss_fn(head(output[:, -1]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % args.every == 0:
            training += time.perf_counter() - started
            if args.validate:
                validate(lstm, head, loss_fn, val)
            accuracy = None
            if args.accuracy:
                with torch.no_grad():
                    logits = head(lstm(x_test)[0][:, -1])
                    accuracy = float((logits.argmax(1) == y_test).float().mean())
            rows.append({"iteration": iteration, "seconds": training, "accuracy": accuracy})
            started = time.perf_counter()
    return rows


CONTENDERS = {"project": project, "peer": peer}


def checkpoints(name: str, *args: str) -> list[dict]:
    """Run one contender in a fresh process; its checkpoints."""
    command = [sys.executable, "-m", "benchmarks.contenders", name, *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["checkpoints"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--accuracy", action="store_true", help="test accuracy at each check")
    parser.add_argument("--seed", type=int, help="instead of params.yaml's seed")
    parser.add_argument("--validate", action="store_true", help="peer: score val, as the stage")
    args = parser.parse_args()
    params = config.load_params()
    if args.seed is not None:
        params = params.model_copy(update={"seed": args.seed})
    train, test = (load_arrays(params.paths.split(split)) for split in ("train", "test"))
    rows = CONTENDERS[args.name](params, args, train, test)
    print(json.dumps({"contender": args.name, "checkpoints": rows}))  # noqa: T201


if __name__ == "__main__":
    main()
