"""What tests/test_readme.py reads from README.md and docs/*.md, and how it checks their
commands: fenced shell blocks split into simple commands; the repository's own make targets,
console scripts (with their `--help`, run through setup.py's entry points), launch arguments,
node parameters and topics, and what `make demo` writes; a Checker that collects every command
that would not run as written."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
BIN = Path(sys.executable).parent  # the venv's console scripts, as the other tests find them
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# Commands of the README's shell blocks that are not this repository's: accepted as they are.
EXTERNAL_COMMANDS = {"cd", "source", "export", "sudo", "apt", "apt-get", "mkdir", "ln", "git", "pip", "python3",
                     "colcon", "trtexec"}
SEPARATORS = {";", "&&", "||", "|"}


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Command:
    source: str  # file:line, for messages
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}: {' '.join(self.words)}"


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every ``` block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^\s*```(\S*)", lines[i])
        if opening:
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append((opening.group(1).lower(), start, "\n".join(body)))
        i += 1
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)


def shell_commands(path: Path) -> list[Command]:
    """Each simple command of the file's shell blocks, continuation lines joined, comments and
    leading VAR=value assignments dropped."""
    commands = []
    for language, first_line, body in fenced_blocks(path.read_text()):
        if language not in SHELL_LANGUAGES:
            continue
        lines, number = body.split("\n"), first_line
        index = 0
        while index < len(lines):
            line, start = lines[index], number + index
            while line.rstrip().endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line.rstrip()[:-1] + " " + lines[index]
            index += 1
            words = shlex.split(line, comments=True)
            current: list[str] = []
            for word in words + [";"]:
                if word in SEPARATORS:
                    while current and re.match(r"^[A-Za-z_]\w*=", current[0]):
                        current.pop(0)
                    if current:
                        commands.append(Command(f"{shown(path)}:{start}", tuple(current)))
                    current = []
                else:
                    current.append(word)
    return commands


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def setup_console_scripts() -> dict[str, str]:
    """console_scripts of setup.py: name -> 'module:function'."""
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', (REPO / "setup.py").read_text()))


def script_of_module() -> dict[str, str]:
    """`python -m <module>` -> the console script that runs that module's main."""
    wrappers = dict(re.findall(r'def (\w+)\(\) -> int:\s+return _run\("([\w.]+):main"\)',
                               (REPO / "vexkd_ros" / "console_scripts.py").read_text()))
    return {wrappers[target.split(":")[1]]: script for script, target in setup_console_scripts().items()
            if target.split(":")[1] in wrappers}


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), flags=re.M))


def launch_arguments() -> list[re.Pattern]:
    """The names launch/perception.launch.py declares (f-string names as patterns)."""
    tree = ast.parse((REPO / "launch" / "perception.launch.py").read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            first = node.args[0]
            if isinstance(first, ast.Constant):
                names.append(re.escape(first.value))
            elif isinstance(first, ast.JoinedStr):
                names.append("".join(re.escape(part.value) if isinstance(part, ast.Constant) else r"\d+"
                                     for part in first.values))
    return [re.compile(name + "$") for name in names]


def node_topic_names() -> list[re.Pattern]:
    """The private topic names (~/...) the nodes subscribe and publish."""
    names = set()
    for source in (REPO / "vexkd_ros").glob("*.py"):
        names.update(re.findall(r'"(~/[^"]+)"', source.read_text()))
    return [re.compile(re.sub(r"\\\{[^}]*\\\}", r"[^/]+", re.escape(name)) + "$") for name in names]


def demo_run_names() -> set[str]:
    from vexkd_train.demo import run_names

    return run_names()


@lru_cache(maxsize=1)
def demo_scenes() -> tuple[list[str], list[str]]:
    """(train, val) scene names of the world `make demo` writes."""
    from vexkd_core.data.synthetic.writer import demo_config, scene_names

    config = demo_config(REPO / "demo" / "world")
    return scene_names(config.version, config.scenes - config.val_scenes, config.val_scenes)


# ----------------------------------------------------------------------------- the scripts' own parsers
_HELP: dict[tuple[str, str], tuple[int, str]] = {}
# Runs in a child process: the console script's entry point (setup.py's module:function, what
# the installed script calls) with `[<subcommand>] --help` as its argv, once per subcommand.
_HELP_RUNNER = """
import contextlib, importlib, io, json, sys
module, function, script, *subcommands = sys.argv[1:]
entry = getattr(importlib.import_module(module), function)
helps = {}
for subcommand in subcommands:
    sys.argv = [script, *([subcommand] if subcommand else []), "--help"]
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = entry() or 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    helps[subcommand] = [code, output.getvalue()]
print(json.dumps(helps))
"""


def fetch_helps(pairs: set[tuple[str, str]]) -> None:
    """`<script> [<subcommand>] --help` of every pair into _HELP: one process per console
    script (its imports paid once), the scripts side by side."""
    wanted: dict[str, list[str]] = {}
    for script, subcommand in sorted(pairs - set(_HELP)):
        wanted.setdefault(script, []).append(subcommand)
    entries = setup_console_scripts()

    def run(script: str) -> dict:
        module, function = entries[script].split(":")
        result = subprocess.run([sys.executable, "-c", _HELP_RUNNER, module, function, script, *wanted[script]],
                                capture_output=True, text=True, timeout=180, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode != 0:
            return {subcommand: (result.returncode, result.stderr) for subcommand in wanted[script]}
        return json.loads(result.stdout.splitlines()[-1])

    with ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool:
        for script, helps in zip(wanted, pool.map(run, wanted)):
            _HELP.update({(script, subcommand): tuple(value) for subcommand, value in helps.items()})


def has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def flag_choices(help_text: str, flag: str) -> set[str] | None:
    found = re.search(rf"(?<![\w-]){re.escape(flag)} \{{([^}}]*)\}}", help_text)
    return set(found.group(1).split(",")) if found else None


# ----------------------------------------------------------------------------- checking commands
@dataclass
class Invocation:
    """A console-script command: the script, its subcommand (or ''), its arguments after it."""

    command: Command
    script: str
    subcommand: str
    arguments: tuple[str, ...]


class Checker:
    def __init__(self):
        self.scripts = setup_console_scripts()
        self.modules = script_of_module()
        self.targets = makefile_targets()
        self.problems: list[str] = []
        self.invocations: list[Invocation] = []
        from vexkd_ros.launch_arguments import EXECUTABLES

        self.node_modality = {executable: modality for modality, executable in EXECUTABLES.items()}

    def fail(self, command: Command, message: str) -> None:
        self.problems.append(f"{command}\n    {message}")

    def check(self, command: Command, strict: bool) -> None:
        """`strict`: a command this test does not know is a problem (README); otherwise skipped."""
        words = list(command.words)
        if words[0] == "sudo":
            words = words[1:]
        program = words[0]
        name = Path(program).name
        if program.startswith(".venv/bin/"):
            program = name
        if program == "make":
            for target in words[1:]:
                if not target.startswith("-") and "=" not in target and target not in self.targets:
                    self.fail(command, f"make target '{target}' is not in the Makefile")
        elif program in self.scripts:
            self.console_script(command, program, words[1:])
        elif program == "torchrun":
            if "-m" not in words or words[words.index("-m") + 1] not in self.modules:
                self.fail(command, "torchrun runs no module of this package (-m <module> with a console script)")
            else:
                at = words.index("-m")
                self.console_script(command, self.modules[words[at + 1]], words[at + 2:])
        elif program == "ros2":
            self.ros2(command, words[1:])
        elif name in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
            self.repository_script(command, words[1], words[2:])
        elif name in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2] in self.modules:
            self.console_script(command, self.modules[words[2]], words[3:])
        elif name == "activate" or (program == "source" and words[1:] == [".venv/bin/activate"]):
            if not (BIN / "activate").is_file():
                self.fail(command, f"{BIN / 'activate'} does not exist")
        elif strict and name not in EXTERNAL_COMMANDS:
            self.fail(command, f"'{program}' is neither this repository's nor a known external command: "
                               "add a check for it to tests/support/readme_commands.py")

    def console_script(self, command: Command, script: str, arguments: list[str]) -> None:
        if script in self.node_modality:
            self.node(command, script, arguments)
            return
        subcommand = arguments[0] if arguments and not arguments[0].startswith("-") else ""
        rest = tuple(arguments[1:] if subcommand else arguments)
        self.invocations.append(Invocation(command, script, subcommand, rest))
        self.demo_paths(command, arguments)

    def repository_script(self, command: Command, path: str, arguments: list[str]) -> None:
        script = REPO / path
        if not script.is_file():
            self.fail(command, f"{path} does not exist")
            return
        source = script.read_text()
        for flag in flags_of(arguments):
            if f'"{flag}"' not in source:
                self.fail(command, f"{path} defines no option {flag}")

    def ros2(self, command: Command, arguments: list[str]) -> None:
        if arguments[:1] == ["launch"]:
            package, launch_file, *rest = arguments[1:]
            if package != "vexkd" or not (REPO / "launch" / launch_file).is_file():
                self.fail(command, f"no launch file {package}/{launch_file} in launch/")
                return
            declared = launch_arguments()
            for argument in rest:
                key = argument.split(":=")[0]
                if ":=" not in argument or not any(pattern.match(key) for pattern in declared):
                    self.fail(command, f"the launch file declares no argument '{key}'")
        elif arguments[:1] == ["run"]:
            package, executable, *rest = arguments[1:]
            if package != "vexkd" or executable not in self.scripts:
                self.fail(command, f"'{package} {executable}' is not a console script of this package")
                return
            self.console_script(command, executable, rest)
        elif arguments[:1] != ["bag"]:
            self.fail(command, f"ros2 {' '.join(arguments[:1])}: add a check for it to tests/support/readme_commands.py")

    def node(self, command: Command, executable: str, arguments: list[str]) -> None:
        """`<node> --ros-args -p name:=value -r from:=to`: parameters the node declares, names it uses."""
        from vexkd_ros.detector_parameters import declared_names

        parameters, topics = set(declared_names(self.node_modality[executable])), node_topic_names()
        if arguments and arguments[0] != "--ros-args":
            self.fail(command, f"{executable} takes only --ros-args")
        for option, value in zip(arguments, arguments[1:]):
            if option == "-p" and value.split(":=")[0] not in parameters:
                self.fail(command, f"{executable} declares no parameter '{value.split(':=')[0]}'")
            if option == "-r" and value.startswith("~/") and \
                    not any(pattern.match(value.split(":=")[0]) for pattern in topics):
                self.fail(command, f"{executable} has no topic '{value.split(':=')[0]}'")
        self.demo_paths(command, arguments)

    def demo_paths(self, command: Command, arguments) -> None:
        """Paths into demo/ name what `make demo` writes: its runs, and its val scene's bag."""
        for argument in arguments:
            for run in re.findall(r"demo/runs/([\w-]+)", argument):
                if run not in demo_run_names():
                    self.fail(command, f"make demo writes no run '{run}' (vexkd_train/demo.py)")
            for scene in re.findall(r"demo/bags/(scene-\d+)", argument):
                if scene != demo_scenes()[1][0]:
                    self.fail(command, f"make demo bags val scene {demo_scenes()[1][0]}, not {scene}")
        if "demo/world" in arguments and "--scene" in arguments:
            scene = arguments[arguments.index("--scene") + 1]
            if scene not in demo_scenes()[0] + demo_scenes()[1]:
                self.fail(command, f"the demo world has no scene {scene}")

    def check_invocations(self) -> None:
        """Against the installed scripts' own parsers."""
        fetch_helps({(i.script, i.subcommand) for i in self.invocations})
        for invocation in self.invocations:
            code, help_text = _HELP[(invocation.script, invocation.subcommand)]
            label = f"{invocation.script} {invocation.subcommand}".strip()
            if code != 0:
                self.fail(invocation.command, f"`{label} --help` exits {code}: {help_text.strip()[-400:]}")
                continue
            arguments = list(invocation.arguments)
            for index, word in enumerate(arguments):
                if not word.startswith("--"):
                    continue
                flag, _, attached = word.partition("=")
                if not has_flag(help_text, flag):
                    self.fail(invocation.command, f"`{label}` has no option {flag} (see `{label} --help`)")
                    continue
                choices = flag_choices(help_text, flag)
                value = attached or (arguments[index + 1] if index + 1 < len(arguments) else "")
                if choices and value not in choices:
                    self.fail(invocation.command, f"`{label} {flag}` takes one of {sorted(choices)}, not '{value}'")
            self.config_overrides(invocation.command, arguments)

    def config_overrides(self, command: Command, arguments: list[str]) -> None:
        from vexkd_core.config import PRESETS, load_config

        sets = [value for option, value in zip(arguments, arguments[1:]) if option == "--set"]
        spec = arguments[arguments.index("--config") + 1] if "--config" in arguments else "tiny"
        if sets:
            try:
                load_config(spec if spec in PRESETS else "tiny", sets)
            except ValueError as error:
                self.fail(command, f"--set is not accepted: {error}")


def flags_of(arguments) -> list[str]:
    return [word.partition("=")[0] for word in arguments if word.startswith("--")]


def problems_of(files: dict[Path, bool]) -> list[str]:
    """Every problem of the commands of `files` (path -> strict)."""
    checker = Checker()
    for path, strict in files.items():
        for command in shell_commands(path):
            checker.check(command, strict)
    checker.check_invocations()
    return checker.problems


def github_anchors(markdown: str) -> set[str]:
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*\s*$", prose(markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors

