import re

import pytest
from typer.testing import CliRunner

from fedsim.cli.privacy import app
from fedsim.errors import ConfigError
from fedsim.privacy.accounting import plan

runner = CliRunner()
BASE = ["plan", "--rounds", "30", "--fraction", "0.1", "--local-epochs", "5",
        "--batch-size", "10", "--dataset-size", "13"]


def invoke(*extra):
    return runner.invoke(app, [*BASE, *extra], terminal_width=120)


def epsilon_rows(output):
    """(participation, epsilon) rows of the epsilon table."""
    rows = re.findall(r"│\s+(\d+)\s+│\s+([\d.]+)\s+│", output)
    return [(int(k), float(e)) for k, e in rows]


def test_plan_with_noise_multiplier_prints_the_schedule():
    # Execute
    result = invoke("--noise-multiplier", "1.1")
    # Assert
    assert result.exit_code == 0, result.output
    expected = plan(rounds=30, fraction=0.1, local_epochs=5, batch_size=10,
                    dataset_size=13, noise_multiplier=1.1)
    assert "1.1 (given)" in result.output
    assert "1e-05 (default min(1e-5, 0.1/n); 1/n = 0.0769)" in result.output
    assert "0.5 (1 / ceil(n/B); expected batch 6.5)" in result.output
    assert re.search(r"steps per participation\s+│\s+10\b", result.output)
    assert epsilon_rows(result.output) == [
        (k, round(e, 3)) for k, e in enumerate(expected.epsilons, 1)]
    assert re.search(r"│\s+3 │\s+[\d.]+ │ expected \(planning\)", result.output)
    assert re.search(r"│\s+30 │\s+[\d.]+ │ cap K: the worst case", result.output)


def test_plan_with_target_epsilon_calibrates_the_noise_for_the_cap():
    result = invoke("--target-epsilon", "8", "--delta", "1e-6")
    assert result.exit_code == 0, result.output
    assert "calibrated: --target-epsilon 8 at K = 30" in result.output
    assert "1e-06 (given" in result.output
    final = epsilon_rows(result.output)[-1]
    assert final[0] == 30 and 7.98 <= final[1] <= 8.0
    capped = invoke("--target-epsilon", "8", "--max-participations", "5")
    assert capped.exit_code == 0, capped.output
    assert "at K = 5)" in capped.output
    assert "5 (--max-participations; enforced)" in capped.output
    assert epsilon_rows(capped.output)[-1][0] == 5


def test_large_delta_and_gdp_get_warnings():
    result = invoke("--noise-multiplier", "1.0", "--delta", "0.1",
                    "--accountant", "gdp")
    assert result.exit_code == 0, result.output
    assert "is not below 1/n" in result.output
    assert "gdp accountant is experimental" in result.output


def test_bad_parameters_raise_one_config_error():
    # Execute
    result = invoke("--noise-multiplier", "0", "--target-epsilon", "-2", "--delta",
                    "2", "--accountant", "moments")
    # Assert: the lead's entry point turns this into a one-line error, exit 2.
    assert isinstance(result.exception, ConfigError)
    problems = result.exception.problems
    assert len(problems) == 5
    assert any(p.startswith("--noise-multiplier") for p in problems)
    assert any(p.startswith("--target-epsilon") for p in problems)
    assert any(p.startswith("--delta") for p in problems)
    assert any(p.startswith("--accountant") for p in problems)


def test_missing_noise_source_is_named():
    result = invoke()
    assert isinstance(result.exception, ConfigError)
    assert "give one of --noise-multiplier or --target-epsilon" in str(result.exception)


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"]])
def test_help_says_sample_level_not_client_level(args):
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "SAMPLE-LEVEL" in text
    assert "not client-level DP" in text or "NOT client-level DP" in text
