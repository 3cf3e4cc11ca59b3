"""Command-line mistakes caught by argparse are one line (exit 2) naming the flag, not the usage block."""
import pytest

from pocketdiff.cli import main


@pytest.mark.parametrize("argv, says", [
    (["eval", "quality", "tiny-debug", "--seed", "2**70"], "argument --seed: '2**70' is not a whole number"),
    (["train", "unet", "tiny-debug"], "the following arguments are required: --out"),
    (["evl"], "invalid choice: 'evl'"),
])
def test_an_argparse_error_is_one_line_naming_the_flag(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and says in err and "--help" in err, err
