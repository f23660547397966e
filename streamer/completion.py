"""Shell completion scripts, written from the argument parser (``streamer completion bash|zsh|fish``).

Hand-written rather than argcomplete: no extra dependency, and no Python start
(a second and more, importing the parser's model list) on every Tab press: the
script carries the subcommands, options and choices as they were when it was
printed.  Options that take a value complete their choices, or file names.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")


@dataclass
class Command:
    """One parser of the tree: its subcommand path, options and positional choices."""

    path: str
    """Space-separated subcommand path from the top ("" for the top, "cache ls")."""
    help: str = ""
    subcommands: dict[str, "Command"] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    valued: list[str] = field(default_factory=list)
    """Options that take a value (the next word is theirs)."""
    choices: dict[str, list[str]] = field(default_factory=dict)
    """Option -> its choices."""
    option_help: dict[str, str] = field(default_factory=dict)
    positional_choices: list[str] = field(default_factory=list)
    actions: list[list[str]] = field(default_factory=list)
    """Each option's spellings together (``["-o", "--output"]``)."""


def command_tree(parser: argparse.ArgumentParser, path: str = "", help: str = "") -> Command:
    command = Command(path, help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                command.subcommands[name] = command_tree(child, f"{path} {name}".strip(), helps.get(name, ""))
            continue
        if not action.option_strings:
            if action.choices:
                command.positional_choices.extend(str(c) for c in action.choices)
            continue
        if action.help == argparse.SUPPRESS:
            continue
        command.options.extend(action.option_strings)
        command.actions.append(list(action.option_strings))
        for option in action.option_strings:
            command.option_help[option] = _short_help(action.help or "")
        if action.nargs != 0:
            command.valued.extend(action.option_strings)
            if action.choices:
                for option in action.option_strings:
                    command.choices[option] = [str(c) for c in action.choices]
    return command


def _short_help(text: str) -> str:
    text = re.sub(r"%\([a-z_]+\)s", "", text)
    text = text.split(" (", 1)[0].split("; ", 1)[0].strip()
    return text[:70]


def _walk(command: Command) -> list[Command]:
    found = [command]
    for child in command.subcommands.values():
        found.extend(_walk(child))
    return found


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    tree = command_tree(parser)
    prog = parser.prog
    if shell == "bash":
        return _bash(tree, prog)
    if shell == "zsh":
        return f"#compdef {prog}\n# zsh completion for {prog}: source it from ~/.zshrc (it uses zsh's bash completion layer)\n" \
            "autoload -U +X bashcompinit && bashcompinit\n" + _bash(tree, prog)
    if shell == "fish":
        return _fish(tree, prog)
    raise ValueError(f"shell must be one of {', '.join(SHELLS)}, got {shell!r}")


def _case(name: str, rows: dict[str, str]) -> str:
    lines = [f"{name}() {{", '    case "$1" in']
    for key, words in rows.items():
        if words:
            lines.append(f"        '{key}') echo '{words}' ;;")
    lines += ["    esac", "}"]
    return "\n".join(lines)


def _bash(tree: Command, prog: str) -> str:
    fn = "_" + re.sub(r"\W", "_", prog)
    commands = _walk(tree)
    subs = {c.path: " ".join(c.subcommands) for c in commands}
    words = {c.path: " ".join([*c.subcommands, *c.positional_choices]) for c in commands}
    options = {c.path: " ".join(c.options) for c in commands}
    valued = {c.path: " ".join(c.valued) for c in commands}
    choices = {f"{c.path}|{opt}": " ".join(values) for c in commands for opt, values in c.choices.items()}
    return f"""# bash completion for {prog} (printed by `{prog} completion bash`)
{_case(fn + "_subs", subs)}
{_case(fn + "_words", words)}
{_case(fn + "_options", options)}
{_case(fn + "_valued", valued)}
{_case(fn + "_choices", choices)}

{fn}() {{
    local cur prev path word i skip=0
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev=""
    ((COMP_CWORD > 0)) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then
            skip=0
            continue
        fi
        case "$word" in
            --*=*) ;;
            -*) [[ " $({fn}_valued "$path") " == *" $word "* ]] && skip=1 ;;
            *) [[ " $({fn}_subs "$path") " == *" $word "* ]] && path="${{path:+$path }}$word" ;;
        esac
    done
    if ((skip)); then
        local values
        values="$({fn}_choices "$path|$prev")"
        if [[ -n "$values" ]]; then
            COMPREPLY=($(compgen -W "$values" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
            type compopt >/dev/null 2>&1 && compopt -o filenames
        fi
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$({fn}_options "$path")" -- "$cur"))
        return 0
    fi
    local candidates
    candidates="$({fn}_words "$path")"
    if [[ -n "$candidates" ]]; then
        COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
        type compopt >/dev/null 2>&1 && compopt -o filenames
    fi
    return 0
}}
complete -F {fn} {prog}
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(tree: Command, prog: str) -> str:
    lines = [f"# fish completion for {prog} (printed by `{prog} completion fish`)", f"complete -c {prog} -e"]
    for command in _walk(tree):
        parts = command.path.split()
        if not parts:
            condition = "__fish_use_subcommand"
        else:
            condition = f"__fish_seen_subcommand_from {parts[-1]}"
            if len(parts) > 1:
                condition = f"__fish_seen_subcommand_from {parts[-2]}; and " + condition
        if command.subcommands:
            names = " ".join(command.subcommands)
            guard = condition if not parts else f"{condition}; and not __fish_seen_subcommand_from {names}"
            for name, child in command.subcommands.items():
                lines.append(f"complete -c {prog} -f -n {_fish_quote(guard)} -a {name} -d {_fish_quote(_short_help(child.help))}")
        if command.positional_choices:
            lines.append(f"complete -c {prog} -f -n {_fish_quote(condition)} -a {_fish_quote(' '.join(command.positional_choices))}")
        for group in command.actions:
            option = group[0]
            flags = [f"-l {o[2:]}" if o.startswith("--") else f"-s {o[1:]}" if len(o) == 2 else f"-o {o[1:]}" for o in group]
            extra = ""
            if option in command.choices:
                extra = f" -x -a {_fish_quote(' '.join(command.choices[option]))}"
            elif option in command.valued:
                extra = " -r"
            help_text = _fish_quote(command.option_help.get(option, ""))
            lines.append(f"complete -c {prog} -n {_fish_quote(condition)} {' '.join(flags)}{extra} -d {help_text}")
    return "\n".join(lines) + "\n"

