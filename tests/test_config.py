import pytest

from unitscope.config import ConfigError, check_paths, load_config, validate_config


def test_default_config_is_valid_and_gets_defaults(default_config):
    config = validate_config(default_config)
    assert config["extraction"]["batch_size"] == 64
    assert config["models"]["mobilenet_v2_imagenet"]["enabled"] is True
    assert config["models"]["resnet18_imagenet"]["enabled"] is False
    assert config["extraction"]["targets"][0]["save_maps"] is False
    assert config["datasets"]["objects"]["source"]["label_column"] == "label"


def _error(config) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_top_level_key(default_config):
    default_config["extration"] = {}
    message = _error(default_config)
    assert "unknown key 'extration'" in message and "extraction" in message


def test_unknown_nested_key_names_its_path(default_config):
    default_config["extraction"]["batchsize"] = 3
    assert "config key extraction: unknown key 'batchsize'" in _error(default_config)


def test_wrong_type_names_key_and_expected_type(default_config):
    default_config["datasets"]["faces"]["size"] = "many"
    message = _error(default_config)
    assert "datasets.faces.size" in message and "integer" in message and "'many'" in message


def test_bad_value_in_list(default_config):
    default_config["extraction"]["targets"][0]["layers"] = "features.18"
    assert "extraction.targets[0].layers" in _error(default_config)


def test_target_naming_unknown_model(default_config):
    default_config["extraction"]["targets"][0]["model"] = "vgg99"
    message = _error(default_config)
    assert "extraction.targets[0].model" in message and "vgg99" in message


def test_target_naming_unknown_dataset(default_config):
    default_config["extraction"]["targets"][0]["datasets"] = ["faces", "cats"]
    assert "unknown dataset 'cats'" in _error(default_config)


def test_bad_checksum_format(default_config):
    default_config["models"]["resnet56_cifar"]["sha256"] = "abc"
    assert "models.resnet56_cifar.sha256" in _error(default_config)


def test_download_source_requires_sha256(default_config):
    default_config["datasets"]["faces"]["source"] = {
        "kind": "download",
        "url": "http://127.0.0.1/x.zip",
        "labels": "l.csv",
        "path_column": "p",
    }
    assert "datasets.faces.source" in _error(default_config)


def test_load_config_reports_yaml_syntax(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line 2, column 1: not valid YAML: expected ',' or ']'"):
        load_config(bad)


def test_typo_inside_a_source_is_named_with_a_suggestion(default_config):
    source = default_config["datasets"]["faces"]["source"]
    source["lable_column"] = source.pop("label_column")
    assert _error(default_config) == (
        "config key datasets.faces.source: unknown key 'lable_column'; did you mean 'label_column'?"
    )


def test_folder_source_gets_only_folder_defaults(default_config):
    source = validate_config(default_config)["datasets"]["faces"]["source"]
    assert "retries" not in source and "subdir" not in source  # the download branch's defaults


def test_unknown_source_kind_lists_the_kinds(default_config):
    default_config["datasets"]["faces"]["source"]["kind"] = "ftp"
    assert _error(default_config) == "config key datasets.faces.source.kind: 'ftp' is not one of folder, download"


def test_enum_typo_gets_a_suggestion(default_config):
    default_config["models"]["resnet56_cifar"]["arch"] = "cifar_resnet65"
    assert "did you mean 'cifar_resnet56'?" in _error(default_config)


def test_crop_larger_than_resize_is_refused(default_config):
    default_config["models"]["resnet56_cifar"]["preprocessing"]["crop"] = 40
    assert _error(default_config) == (
        "config key models.resnet56_cifar.preprocessing.crop: 40 is larger than resize (32); "
        "expected crop <= resize (the crop would pad the image with black)"
    )


@pytest.mark.parametrize("device", ["banana", "gpu", "cuda:x", "CUDA"])
def test_device_must_be_auto_cpu_or_cuda(default_config, device):
    default_config["extraction"]["device"] = device
    assert _error(default_config).startswith(f"config key extraction.device: {device!r} is not valid (auto, cpu")


def test_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of config keys at the top, got list"):
        load_config(bad)


def test_check_paths_names_missing_checkpoint(default_config, data_dir):
    config = validate_config(default_config)
    config["data_dir"] = str(data_dir)
    check_paths(config)  # the shipped config points at files that exist
    config["models"]["resnet56_cifar"]["checkpoint"] = "checkpoints/nope.th"
    with pytest.raises(
        ConfigError, match=r"config key models.resnet56_cifar.checkpoint: file .*nope.th does not exist"
    ):
        check_paths(config)
