"""`ghostnetv3.commands.model_flags`: the model flags `info` and `fuse` share."""
import argparse

import pytest

from ghostnetv3.commands.model_flags import add_model_args, model_kwargs, parse_input_size


@pytest.mark.parametrize("values,in_chans,want", [
    (["32"], 3, (3, 32, 32)),
    (["28", "40"], 1, (1, 28, 40)),
    (["1", "24", "24"], 3, (1, 24, 24)),
])
def test_input_size_takes_one_two_or_three_numbers(values, in_chans, want):
    assert parse_input_size(values, in_chans) == want


def test_input_size_of_four_numbers_is_refused_saying_what_it_takes():
    with pytest.raises(ValueError, match=r"takes 1 \(S\), 2 \(H W\) or 3 \(C H W\) numbers, got 4"):
        parse_input_size(["1", "3", "32", "32"])


def test_model_kwargs_passes_only_the_knobs_given():
    args = argparse.Namespace(width=0.5, num_conv_branches=None, stem_stride=1, output_stride=None, json=True)
    assert model_kwargs(args) == {"width": 0.5, "stem_stride": 1}


def test_model_args_defaults_are_imagenet_sized_and_leave_the_knobs_unset():
    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["ghostnetv3_050"])
    assert (args.model, args.num_classes, args.input_size) == ("ghostnetv3_050", 1000, ["3", "224", "224"])
    assert model_kwargs(args) == {}
    args = p.parse_args(["ghostnetv3_050", "--width", "0.25", "--output-stride", "16", "--input-size", "64"])
    assert model_kwargs(args) == {"width": 0.25, "output_stride": 16}
    assert parse_input_size(args.input_size) == (3, 64, 64)
