"""A tuning trial whose score is known from its hyperparameters: score = 10 - (x - 3)^2
(+ 0.5 when kind is "b"). Prints a decoy score first (the last match must win), writes a
model the local server can load (it predicts x for every row) and, beside it, when it ran.
``fail_on`` = x makes the trial fail; ``sleep`` holds it that many seconds; ``churn_on`` = x
makes the trial, for ``churn_seconds``, write and delete files in its model folder and read a
link it made there (it fails if the link is taken away while it runs). As a SageMaker
script must be, it is importable: the model server imports it for ``model_fn``."""

# ruff: noqa: E402 - the clock starts before the slow imports: the trial's whole life
import time

started = time.time()

import glob
import json
import os

import joblib


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def main():
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    with open("/opt/ml/input/config/hyperparameters.json") as f:
        hps = json.load(f)
    x = int(hps["x"])
    if str(x) == str(hps.get("fail_on", "")):
        raise ValueError(f"x={x} is the value this trial was told to fail on")
    print("score=-1000  (a decoy: the last match wins)", flush=True)
    time.sleep(float(hps.get("sleep", 0)))
    model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
    if str(x) == str(hps.get("churn_on", "")):
        churn(model_dir, float(hps.get("churn_seconds", 5)))
    score = 10 - (x - 3) ** 2 + (0.5 if hps.get("kind") == "b" else 0.0)
    train = os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
    frame = pd.concat(pd.read_csv(p, header=None) for p in sorted(glob.glob(f"{train}/*.csv")))
    model = DummyRegressor(strategy="constant", constant=x).fit(frame.to_numpy(), [x] * len(frame))
    joblib.dump(model, os.path.join(model_dir, "model.joblib"))
    with open(os.path.join(model_dir, "trial.json"), "w") as f:
        json.dump({"hyperparameters": hps, "started": started, "ended": time.time()}, f)
    print(f"trained with x={x}: score={score}", flush=True)


def churn(model_dir, seconds):
    """Files that come and go, and a link the trial reads, in its own model folder."""
    os.makedirs(os.path.join(model_dir, "work"), exist_ok=True)
    with open(os.path.join(model_dir, "work", "state"), "w") as f:
        f.write("ok")
    link = os.path.join(model_dir, "latest")
    os.symlink("work", link)
    end, n = time.time() + seconds, 0
    while time.time() < end:
        for i in range(50):
            part = os.path.join(model_dir, "work", f"part-{n}-{i}")
            open(part, "w").close()
            os.remove(part)
        with open(os.path.join(link, "state")) as f:  # fails once the link is gone
            assert f.read() == "ok"
        n += 1
    print(f"churned {n} rounds beside the other trials", flush=True)


if __name__ == "__main__":
    main()
