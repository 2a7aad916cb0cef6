"""Seeded fuzzing of the front doors for untrusted input (issue 20): prepare's
image check and the parameter checks, a few hundred malformed inputs each,
bounded in time: nothing may crash or hang, and every rejection must carry
a reason. The same image corpus goes through the serving signature in
tests/test_untrusted_files.py (in a subprocess, with the other checks that
run a TensorFlow decoder on hostile files).
"""

from __future__ import annotations

import math
import random
import time

import pytest
from image_fixtures import malformed_corpus

from kic import parameters
from kic.data.images import ImageRejected, normalize_image
from kic.errors import ParameterError

SEED = 20


def test_prepare_image_check_survives_the_corpus():
    started = time.monotonic()
    outcomes = {"kept": 0, "rejected": 0}
    for name, raw in malformed_corpus(SEED):
        try:
            result = normalize_image(raw)
        except ImageRejected as rejection:
            assert rejection.detail.strip(), name
            outcomes["rejected"] += 1
        else:
            assert result.width > 0 and result.height > 0 and result.jpeg[:2] == b"\xff\xd8", name
            outcomes["kept"] += 1
    assert outcomes["kept"] >= 10 and outcomes["rejected"] >= 50, outcomes
    assert time.monotonic() - started < 20


# --- the parameter front door ------------------------------------------------------------------

def _random_value(rng: random.Random, depth: int = 0):
    choices = [
        lambda: rng.choice([0, 1, -1, 2**31, -2**63, 10**30, 7]),
        lambda: rng.choice([0.0, -0.0, 0.5, 1e-300, 1e308, -1e308, math.nan, math.inf, -math.inf]),
        lambda: rng.choice(["", " ", "0", "1e999", "nan", "inf", "-1", "true", "False", "None", "adam",
                            "gs://", "gs://b/", "s3://x", "/dev/zero", "../../etc", "é" * 5, "x" * 10_000,
                            "\x00", "1,5", "0x10", "１２"]),
        lambda: rng.choice([None, True, False]),
    ]
    if depth < 2:
        choices.append(lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))])
        choices.append(lambda: {str(_random_value(rng, depth + 1))[:8]: _random_value(rng, depth + 1)
                                for _ in range(rng.randrange(3))})
    return rng.choice(choices)()


def _random_parameters(rng: random.Random) -> dict:
    names = [parameter.name for parameter in parameters.PARAMETERS_BY_NAME.values()]
    values = {}
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(names) if rng.random() < 0.9 else rng.choice(["", "epochs ", "Epochs", "x" * 300])
        values[name] = _random_value(rng)
    return values


@pytest.mark.parametrize("front_door", ["validate", "resolve"])
def test_parameter_front_door_survives_random_values(front_door):
    rng = random.Random(SEED)
    check = getattr(parameters, front_door)
    started = time.monotonic()
    refused = 0
    for _ in range(300):
        values = _random_parameters(rng)
        try:
            check(values, reachability=False)
        except ParameterError as error:
            assert error.problems and all(problem.expected.strip() for problem in error.problems), values
            assert str(error).strip()
            refused += 1
    assert refused >= 150
    assert time.monotonic() - started < 20
