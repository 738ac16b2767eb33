"""README.md is a user's guide whose commands run as written on a fresh clone.

What can be checked quickly and for real is checked here, against the code itself rather
than a list kept beside it: every `make <target>` the README names is a Makefile target;
every console script it names is a console_scripts entry of setup.py; every console-script
command in its shell blocks (and `torchrun -m <module>`) has a subcommand and flags the
script's own argument parser accepts (its `--help`, through the entry point setup.py
installs), values in that flag's choices, and `--set` keys the config accepts; `ros2 launch`
arguments are ones the launch file declares, `ros2 run` parameters ones the node declares
and remapped names ones the node uses; paths under demo/ are ones `make demo` writes. Every
relative link and image of README.md and docs/*.md exists (with its #anchor, for Markdown).
README stays under 300 lines with its sections in order and carries no commit hash and no
date outside a link. The commands in docs/ get the same checks wherever they call a
console script, `make`, `ros2` or a script of this repository. How they are read and checked:
tests/support/readme_commands.py.
"""
import re

import pytest

from tests.support.readme_commands import (DOCS, README, REPO, github_anchors, makefile_targets, problems_of, prose,
                                           setup_console_scripts, shell_commands)

pytestmark = pytest.mark.unit

MAX_LINES = 300
SECTIONS = ("Install", "The two commands", "Run it on a robot", "Replay nuScenes", "Train on nuScenes", "Status",
            "Latest benchmark figures")
COMMIT_HASH = re.compile(r"(?<![\w.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w-])")
DATE = re.compile(r"\b(19|20)\d\d-[01]\d-[0-3]\d\b")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


# ----------------------------------------------------------------------------- the tests
def test_readme_is_a_short_guide_with_its_sections_in_order():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    headings = re.findall(r"^## (.+?)\s*$", prose(text), flags=re.M)
    found = [section for section in headings if section in SECTIONS]
    assert found == list(SECTIONS), f"README's sections {headings} lack or misorder {SECTIONS}"


def test_readme_names_no_commit_and_no_date_outside_a_link():
    text = LINK.sub("", README.read_text())
    assert not COMMIT_HASH.findall(text), f"commit hashes in README.md: {COMMIT_HASH.findall(text)}"
    assert not [m.group(0) for m in DATE.finditer(text)], \
        f"dates in README.md outside links: {[m.group(0) for m in DATE.finditer(text)]}"


def test_readme_carries_one_benchmark_line_per_recorded_benchmark():
    section = prose(README.read_text()).split("## Latest benchmark figures", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    recorded = sorted(path.stem for path in (REPO / "bench" / "results").glob("*.json"))
    assert len(lines) == len(recorded), f"{len(lines)} benchmark lines in README for {recorded}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_and_image_exists(page):
    text = prose(page.read_text())
    missing = []
    for _, _, target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            missing.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked.read_text()):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page.relative_to(REPO)} links to what does not exist: {missing}"


def test_make_targets_and_console_scripts_named_exist():
    text = README.read_text()
    targets = set(re.findall(r"`make ([\w-]+)", text)) | {word for command in shell_commands(README)
                                                         if command.words[0] == "make" for word in command.words[1:]}
    assert targets - makefile_targets() == set(), "make targets missing from the Makefile"
    named = set(re.findall(r"(?<![\w/.-])(vexkd-[a-z]+|(?:lidar|camera|fusion)_detector|bag_player)(?![\w-])", text))
    assert named and named <= set(setup_console_scripts()), \
        f"not console_scripts of setup.py: {named - set(setup_console_scripts())}"


def test_the_commands_of_readme_and_docs_are_accepted_as_written():
    problems = problems_of({README: True, **{page: False for page in DOCS}})
    assert not problems, "commands that would not run as written:\n" + "\n".join(problems)


def test_a_wrong_flag_or_subcommand_is_caught(tmp_path):
    """The check above is only as good as what it refuses: a README with a misspelt flag, a
    wrong choice, an unknown config key or subcommand, a launch argument, node parameter,
    make target or demo output that does not exist fails on each."""
    (tmp_path / "README.md").write_text("\n".join([
        "```bash",
        "vexkd-train student --modality lidar --dataroot demo/world --bogus-flag 15",
        "vexkd-train student --modality radar --set train.no_such_field=1 --out runs/x",
        "vexkd-ros stakc --bag bags/scene-0003",
        "vexkd-ros stack --bag demo/bags/scene-0012 --checkpoint demo/runs/lidar-distilled/model.pt",
        "ros2 launch vexkd perception.launch.py modality:=lidar no_such_argument:=1",
        "ros2 run vexkd lidar_detector --ros-args -p no_such_parameter:=1",
        "make no-such-target",
        "```", ""]))
    found = "\n".join(problems_of({tmp_path / "README.md": True}))
    for expected in ("no option --bogus-flag", "not 'radar'", "unknown config field 'train.no_such_field'",
                     "`vexkd-ros stakc --help` exits", "no argument 'no_such_argument'",
                     "no parameter 'no_such_parameter'", "make target 'no-such-target'",
                     "no run 'lidar-distilled'", "not scene-0012"):
        assert expected in found, f"{expected!r} not reported in:\n{found}"

