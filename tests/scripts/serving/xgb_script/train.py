"""An XGBoost script-mode script, as AWS's XGBoost examples write them: it saves
xgboost-model and defines model_fn (AWS's XGBoost image has none in script mode)."""

import argparse
import glob
import os

import numpy as np
import xgboost as xgb


def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model"))
    return booster


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_round", type=int, default=10)
    parser.add_argument("--max_depth", type=int, default=3)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    args, _ = parser.parse_known_args()
    rows = np.vstack([np.loadtxt(p, delimiter=",", ndmin=2)
                      for p in sorted(glob.glob(os.path.join(args.train, "*.csv")))])
    train = xgb.DMatrix(rows[:, 1:], label=rows[:, 0])
    booster = xgb.train({"max_depth": args.max_depth, "objective": "binary:logistic"}, train,
                        args.num_round)
    booster.save_model(os.path.join(args.model_dir, "xgboost-model"))
    print("trained", args.num_round, "rounds")
