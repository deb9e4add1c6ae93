"""The paper-size generator has exactly the state_dict of the official FFHQ config-f g_ema."""

import json

import numpy as np
import pytest

from pipeline.models.stylegan2 import Generator

MANIFEST = "stylegan2_ffhq_config_f_g_ema.json"


@pytest.fixture(scope="module")
def manifest(reference_dir):
    return json.loads((reference_dir / "manifests" / MANIFEST).read_text())


@pytest.fixture(scope="module")
def generator():
    return Generator(1024, 512, 8, channel_multiplier=2)


@pytest.fixture(scope="module")
def state_dict(generator):
    return generator.state_dict()


def test_entry_count_matches_manifest(state_dict, manifest):
    assert len(state_dict) == manifest["num_entries"] == 171


def test_keys_match_manifest_in_order(state_dict, manifest):
    assert list(state_dict) == [key for key, _, _ in manifest["state_dict"]]


def test_shapes_match_manifest(state_dict, manifest):
    shapes = {key: list(value.shape) for key, value in state_dict.items()}
    expected = {key: list(shape) for key, shape, _ in manifest["state_dict"]}
    assert shapes == expected


def test_every_entry_is_float32(state_dict, manifest):
    assert {entry[2] for entry in manifest["state_dict"]} == {"float32"}
    assert {str(value.dtype) for value in state_dict.values()} == {"paddle.float32"}


def test_float_element_count_matches_manifest(state_dict, manifest):
    total = sum(int(np.prod(value.shape)) for value in state_dict.values())
    assert total == manifest["num_float_elements"]


def test_latent_counts_match_manifest(generator, manifest):
    assert generator.n_latent == manifest["config"]["n_latent"]
    assert generator.num_layers == manifest["config"]["num_layers"]
    assert generator.channels == {int(res): width for res, width in manifest["config"]["channels"].items()}
