"""No network: importing sktransfer and running both default estimators opens no socket."""

import os

import pytest

from ._helpers import run_python

SCRIPT = """
import socket

attempts = []

def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse

import numpy as np
import sktransfer

X = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
features = sktransfer.PretrainedFeaturizer(progress=False).fit_transform(X)
assert features.shape == (6, 1280)
clf = sktransfer.FineTuneClassifier(max_epochs=1, train_split=None, verbose=0)
clf.fit(X, ["tigger", "misty", "neither"] * 2)
assert clf.predict(X).shape == (6,)
print("attempts", len(attempts))
"""


@pytest.mark.slow  # starts other Python processes
def test_default_estimators_never_touch_the_network():
    # Offline switches that libraries honour are unset, so a fetch would really be tried.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    result = run_python(SCRIPT, env=env)
    assert "attempts 0" in result.stdout
