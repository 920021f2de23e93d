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
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
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
