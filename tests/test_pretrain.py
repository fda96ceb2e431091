"""Pre-training the embedded upstream model: a checkpoint that records how it was made, a second
stage that continues from it, and what the methods chapter reads from them."""
from rtlib import models, pretrain
from rtlib.config import PretrainConfig

TINY = dict(steps=4, batch_size=16, train_images=64, test_images=32, warmup_steps=1,
            checkpoint_every=2, threads=1)


def test_two_stages_make_one_learning_curve(tmp_path):
    first = tmp_path / "stage1.safetensors"
    meta1 = pretrain.pretrain(PretrainConfig(**TINY), first, progress=False)
    assert meta1["command"].startswith("python -m rtlib pretrain --steps 4")
    assert [h["step"] for h in meta1["history"]] == [2, 4]
    second = tmp_path / "stage2.safetensors"
    meta2 = pretrain.pretrain(PretrainConfig(**{**TINY, "steps": 2, "init": str(first)}), second,
                              progress=False)
    assert meta2["init"]["command"] == meta1["command"]
    assert meta2["images_seen"] == meta1["images_seen"] + 2 * 16
    curve = pretrain.learning_curve(pretrain.checkpoint_metadata(second))
    assert curve["stage"].tolist() == [1, 1, 2] and curve["step"].tolist() == [2, 4, 6]
    assert curve["accuracy"].between(0, 1).all()
    # The checkpoint loads like pretrained weights, and is scored per upstream domain.
    models.build(models.EMBEDDED_MODEL, 10, weights=str(second))
    by_domain = pretrain.accuracy_by_domain(second, images=16)
    assert set(by_domain) == {"print", "texture", "clutter"}
    assert all(0 <= a <= 1 for a in by_domain.values())
