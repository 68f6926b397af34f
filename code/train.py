"""Training script (trainer): a scikit-learn random forest on the train channel.

Reads /opt/ml/input/data/train/*.csv (label first, header) and the job's hyperparameters;
writes /opt/ml/model/model.joblib, which the serving container loads for batch transform.
"""

import glob
import json
import os

import joblib
import pandas as pd
from sklearn.ensemble import RandomForestClassifier


def hyperparameters() -> dict:
    with open("/opt/ml/input/config/hyperparameters.json") as f:
        raw = json.load(f)
    parsed = {}
    for key, value in raw.items():
        try:
            parsed[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            parsed[key] = value
    return parsed


hps = hyperparameters()
label = hps.get("label_column", "label")
train_dir = os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
frame = pd.concat([pd.read_csv(f) for f in sorted(glob.glob(os.path.join(train_dir, "*.csv")))])
features, target = frame.drop(columns=[label]).to_numpy(), frame[label].to_numpy()

model = RandomForestClassifier(
    n_estimators=int(hps.get("n_estimators", 100)),
    max_depth=int(hps["max_depth"]) if hps.get("max_depth") else None,
    random_state=int(hps.get("seed", 0)),
)
model.fit(features, target)
model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
joblib.dump(model, os.path.join(model_dir, "model.joblib"))
summary = {"hyperparameters": hps, "rows": len(frame), "train_accuracy": model.score(features, target)}
with open(os.path.join(model_dir, "training-summary.json"), "w") as f:
    json.dump(summary, f)
print(f"trained on {len(frame)} rows: {json.dumps(summary)}")
