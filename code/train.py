"""Training script (trainer): a scikit-learn random forest on the train channel, written as a
SageMaker script-mode script: training under ``__main__``, and the inference handlers the
model server imports this module for (SAGEMAKER_PROGRAM=train.py).

Reads /opt/ml/input/data/train/*.csv (label first, header) and the job's hyperparameters;
writes /opt/ml/model/model.joblib, which ``model_fn`` loads for batch transform.
"""

import argparse
import glob
import json
import os

import joblib


def model_fn(model_dir):
    """The model server calls this once, with the unpacked model.tar.gz."""
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def parse_args():
    """Hyperparameters arrive as arguments (--max_depth 6), as SageMaker passes them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--max_depth", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN",
                                                          "/opt/ml/input/data/train"))
    args, _ = parser.parse_known_args()
    return args


def main():
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    args = parse_args()
    frame = pd.concat([pd.read_csv(f) for f in sorted(glob.glob(os.path.join(args.train, "*.csv")))])
    features = frame.drop(columns=[args.label_column]).to_numpy()
    target = frame[args.label_column].to_numpy()
    model = RandomForestClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth,
                                   random_state=args.seed)
    model.fit(features, target)
    joblib.dump(model, os.path.join(args.model_dir, "model.joblib"))
    summary = {"hyperparameters": vars(args), "rows": len(frame),
               "train_accuracy": model.score(features, target)}
    with open(os.path.join(args.model_dir, "training-summary.json"), "w") as f:
        json.dump(summary, f)
    print(f"trained on {len(frame)} rows: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
