"""The default demo (valora-demo) runs the base model and two adapters in one batch."""

from __future__ import annotations

from valora.demo import main


def test_the_demo_answers_on_the_base_model_and_each_adapter(capsys):
    main(["--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert "adapters: lora0, lora1" in out
    for who in ("base model", "lora0", "lora1"):
        assert out.count(f"user ({who}):") == 2  # a text chat and an image chat each
    assert "18 tokens for 6 batched requests" in out  # 3 tokens each
