"""`ghostnetv3 predict` (ghostnetv3.commands.predict): flags reach `ghostnetv3.predict.predict`, and
its answer is printed as text or JSON."""
import json

import torch

import ghostnetv3.predict as prediction
from ghostnetv3.cli import main

ANSWER = {"model": "m", "source": "RUN", "weights": "EMA weights of best.pt", "input": [1, 32, 32],
          "images": [{"image": "a.png", "top": [{"class": "cat", "index": 0, "prob": 0.75}]}], "skipped": []}


def _fake(calls):
    def predict(source, images, **kw):
        calls.append((source, list(images), kw))
        return ANSWER
    return predict


def test_flags_reach_predict_and_json_is_printed(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(prediction, "predict", _fake(calls))
    before = torch.get_num_threads()
    try:
        rc = main(["predict", "RUN", "a.png", "b.png", "--topk", "2", "--weights", "raw", "--checkpoint", "last",
                   "--model", "ghostnetv3_050", "--num-classes", "4", "--in-chans", "1", "--img-size", "32",
                   "--on-bad-image", "skip", "--threads", "1", "--json"])
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert rc == 0 and threads == 1
    assert calls == [("RUN", ["a.png", "b.png"], dict(topk=2, weights="raw", checkpoint="last",
                                                        model="ghostnetv3_050", num_classes=4, in_chans=1,
                                                        img_size=32, on_bad_image="skip", threads=1))]
    assert json.loads(capsys.readouterr().out) == ANSWER


def test_text_output_is_format_predictions(monkeypatch, capsys):
    monkeypatch.setattr(prediction, "predict", _fake([]))
    assert main(["predict", "RUN", "a.png"]) == 0
    out = capsys.readouterr().out
    assert out == prediction.format_predictions(ANSWER) + "\n"
    assert out.splitlines()[-1] == "   75.00%  cat"
