"""A small CNN trained with sliver.qat at W2A2 on scikit-learn's digits: the folded
module (interpreter) and the compiled x86_64 artifact predict what the fake-quant
torch model predicts."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sliver.benchmarks import train_digits_qat as T  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    data, fp32, qat = T.train(2, 2, epochs=4, qat_epochs=3, seed=0)
    return data, fp32, qat, T.predict(qat, data.x_test)


def test_w2a2_digits_interpreter_agrees_with_fake_quant_torch(trained):
    import sliver
    from sliver.api import DEFAULT_PIPELINE, optimize
    from sliver.ir.interp import run

    data, fp32, qat, fq_pred = trained
    y = data.y_test.numpy()
    assert T.agreement(T.predict(fp32, data.x_test), y) > 0.9
    assert T.agreement(fq_pred, y) > 0.8  # W2A2 after 3 QAT epochs
    module = sliver.trace(qat, (data.x_test,))
    (record, *_) = optimize(module, DEFAULT_PIPELINE)
    assert [r["op"] for r in record.notes["layers"]] == ["qconv2d", "qconv2d", "qconv2d", "qdense"]
    assert all(r["w_bits"] == 2 and r["a_bits"] == 2 for r in record.notes["layers"])
    assert not any(op.kind in ("conv2d", "linear", "fake_quant", "batch_norm") for op in module.ops)
    (logits,) = run(module, [data.x_test.numpy()])
    assert T.agreement(logits.argmax(1), fq_pred) >= 0.995


@pytest.mark.slow
def test_w2a2_digits_compiled_agrees_with_fake_quant_torch(trained):
    import sliver

    data, _, qat, fq_pred = trained
    art = sliver.lower(qat, (data.x_test,), target="x86_64")
    assert {op.kind for op in art.module.ops} >= {"qconv2d", "qdense"}
    out = art.load()(data.x_test.numpy())
    assert T.agreement(np.asarray(out).argmax(1), fq_pred) >= 0.995


def test_cli_script_reports_accuracy_and_agreement(capsys):
    assert T.main(["--epochs", "1", "--qat-epochs", "1", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy   fp32" in out and "W2A2 fake-quant (torch)" in out
    assert "fold-fake-quant: 4 of 4 conv2d/linear layers folded" in out
    assert "interpreter vs fake-quant torch: same prediction on" in out
