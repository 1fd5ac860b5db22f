"""The example scan by Talos 2.0.10 ``talos.Scan``; run by ``bench/run.py`` inside its own venv (pandas<3).

Reads the training and validation arrays that hhscan prepared (so every tool sees the same events and weights),
prints the wall time of ``Scan`` and the best validation AUC as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(arrays_path: str, grid_json: str, workdir: str) -> None:
    import keras
    import numpy as np
    import talos
    from sklearn.metrics import roc_auc_score

    data = np.load(arrays_path)
    x, y, w = data["x"], data["y"], data["w"]
    xv, yv, wv = data["xv"], data["yv"], data["wv"]
    aucs = []

    def build_and_fit(x_train, y_train, x_val, y_val, params):
        inputs = keras.Input((x_train.shape[1],))
        h = keras.layers.Normalization(mean=x_train.mean(axis=0), variance=x_train.var(axis=0))(inputs)
        for _ in range(params["layers"]):
            h = keras.layers.Dense(params["neurons"], activation=params["activation"])(h)
        net = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
        net.compile(optimizer=keras.optimizers.Adam(params["learning_rate"]), loss="binary_crossentropy")
        history = net.fit(x_train, y_train, sample_weight=w, validation_data=(x_val, y_val, wv),
                          epochs=params["epochs"], batch_size=params["batch_size"], verbose=0)  # fmt: skip
        aucs.append(roc_auc_score(y_val, net.predict(x_val, batch_size=65536, verbose=0)[:, 0], sample_weight=wv))
        return history, net

    os.chdir(workdir)
    started = time.perf_counter()
    talos.Scan(x=x, y=y, x_val=xv, y_val=yv, params=json.loads(grid_json), model=build_and_fit,
               experiment_name="talos_bench", print_params=False, disable_progress_bar=True)  # fmt: skip
    print(json.dumps({"wall_s": time.perf_counter() - started, "best_val_auc": max(aucs), "backend": "tensorflow"}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
