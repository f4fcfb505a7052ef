"""Writers of static bash, zsh and fish completion scripts from a :class:`~completion_scripts.Node` tree.

Each writer is a pure function ``(tree, prog, header) -> str``; the output depends only on the tree, so
regenerating from an unchanged app gives byte-identical files (CI diffs them).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsis_cli.cli.completion_scripts import Arg, Node, Opt


def _ident(path: tuple[str, ...]) -> str:
    """A shell-function-safe suffix for a command path (``mal-label`` -> ``mal_label``)."""
    return "__".join(re.sub(r"[^A-Za-z0-9]", "_", p) for p in path)


def _function_names(tree: Node, prefix: str) -> dict[tuple[str, ...], str]:
    """One unique function name per node, stable for a given tree."""
    names: dict[tuple[str, ...], str] = {}
    used: set[str] = set()
    for node in tree.walk():
        base = prefix + ("__" + _ident(node.path) if node.path else "")
        name, n = base, 2
        while name in used:  # "a-b" and "a_b" would otherwise collide
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[node.path] = name
    return names


def _sq(text: str) -> str:
    """Single-quote for bash and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


# ------------------------------------------------------------------------------------------------ bash


def bash(tree: Node, prog: str, header: str) -> str:
    fn = _function_names(tree, f"__{prog}_node")
    out = [
        f"# bash completion for {prog}                                  -*- shell-script -*-",
        f"# {header}",
        f"# Install: source <({prog} completion bash)",
        f"#      or: {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}",
        "",
        f"__{prog}_add() {{  # append each line of stdin to COMPREPLY",
        "    local line",
        '    while IFS= read -r line; do COMPREPLY+=("$line"); done',
        "}",
        "",
        f"__{prog}_words() {{  # complete from a fixed list of words",
        f'    __{prog}_add < <(compgen -W "$1" -- "$cur")',
        "}",
        "",
        f"__{prog}_files() {{  # file names; $1=1 also offers - (stdin/stdout)",
        "    compopt -o filenames 2>/dev/null",
        '    if [[ $1 == 1 && ( -z $cur || $cur == - ) ]]; then COMPREPLY+=(-); fi',
        f'    __{prog}_add < <(compgen -f -- "$cur")',
        "}",
        "",
        f"__{prog}_dirs() {{  # folder names; $1=1 also offers -",
        "    compopt -o filenames 2>/dev/null",
        '    if [[ $1 == 1 && ( -z $cur || $cur == - ) ]]; then COMPREPLY+=(-); fi',
        f'    __{prog}_add < <(compgen -d -- "$cur")',
        "}",
        "",
    ]
    for node in tree.walk():
        out += _bash_node(node, fn, prog)
    out += [
        f"_{prog}() {{",
        f"    local cur prev cword=$COMP_CWORD node={fn[()]} npos=0 ddash=0 i w __{prog}_r",
        "    COMPREPLY=()",
        '    cur=${COMP_WORDS[cword]}',
        '    prev=${COMP_WORDS[cword-1]}',
        "    # COMP_WORDBREAKS splits --opt=value into --opt, =, value",
        "    if [[ $cur == = && $prev == -* ]]; then",
        "        cur=",
        "    elif [[ $prev == = ]] && (( cword > 1 )); then",
        '        prev=${COMP_WORDS[cword-2]}',
        "    fi",
        "    # walk the words before the cursor: find the (sub)command, count its positional arguments",
        "    for (( i = 1; i < cword; i++ )); do",
        '        w=${COMP_WORDS[i]}',
        "        if (( ddash )); then (( npos += 1 )); continue; fi",
        "        case $w in",
        "        --) ddash=1 ;;",
        "        -?*)",
        "            $node vopts",
        f'            if [[ $__{prog}_r == *" $w "* || ${{COMP_WORDS[i+1]}} == = ]]; then',
        '                # the value follows, as the next word or after "="',
        '                if [[ ${COMP_WORDS[i+1]} == = ]]; then (( i += 2 )); else (( i += 1 )); fi',
        "            fi",
        "            ;;",
        "        *)",
        f"            __{prog}_r=",
        '            (( npos == 0 )) && $node sub "$w"',
        f'            if [[ -n $__{prog}_r ]]; then node=$__{prog}_r; else (( npos += 1 )); fi',
        "            ;;",
        "        esac",
        "    done",
        "    $node complete",
        "}",
        "",
        f"complete -F _{prog} {prog}",
        "",
    ]
    return "\n".join(out)


def _bash_value(o: Opt | Arg, prog: str) -> str:
    dash = "1" if o.dash else "0"
    if o.kind == "file":
        return f"__{prog}_files {dash}"
    if o.kind == "dir":
        return f"__{prog}_dirs {dash}"
    if o.kind == "choice":
        return f"__{prog}_words {_sq(' '.join(o.choices))}"
    return ":"  # a number or free text: nothing to offer


def _bash_node(node: Node, fn: dict[tuple[str, ...], str], prog: str) -> list[str]:
    label = " ".join((prog, *node.path))
    vopts = node.value_options()
    lines = [
        f"# {label}",
        f"{fn[node.path]}() {{",
        "    case $1 in",
        f"    vopts) __{prog}_r={_sq(' ' + ' '.join(vopts) + ' ')} ;;",
    ]
    if node.is_group:
        lines.append("    sub)")
        lines.append("        case $2 in")
        for child in node.children:
            lines.append(f"        {_sq(child.path[-1])}) __{prog}_r={fn[child.path]} ;;")
        lines.append("        esac")
        lines.append("        ;;")
    lines.append("    complete)")
    valued = [o for o in node.options if o.takes_value]
    if valued:
        lines.append("        case $prev in")
        for o in valued:
            lines.append(f"        {'|'.join(o.names)}) {_bash_value(o, prog)}; return ;;")
        lines.append("        esac")
    names = sorted({n for o in node.options for n in o.names})
    lines.append('        if [[ $ddash == 0 && $cur == -* ]]; then')
    lines.append(f"            __{prog}_words {_sq(' '.join(names))}")
    lines.append("            return")
    lines.append("        fi")
    if node.is_group:
        subs = " ".join(c.path[-1] for c in node.children)
        lines.append(f"        if [[ $npos == 0 ]]; then __{prog}_words {_sq(subs)}; fi")
    elif node.args:
        lines.append('        case $npos in')
        for i, a in enumerate(node.args):
            pattern = "*" if a.many else str(i)
            lines.append(f"        {pattern}) {_bash_value(a, prog)} ;;")
            if a.many:
                break
        lines.append("        esac")
    lines += ["        ;;", "    esac", "}", ""]
    return lines


# ------------------------------------------------------------------------------------------------- zsh


def _zsh_desc(text: str) -> str:
    """Escape text inside an _arguments ``[description]``."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_colon(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _zsh_action(o: Opt | Arg, prog: str) -> str:
    if o.kind == "file":
        return f"_{prog}_file_or_dash" if o.dash else "_files"
    if o.kind == "dir":
        return "_files -/"
    if o.kind == "choice":
        return "(" + " ".join(re.sub(r"([\\ ():'\"])", r"\\\1", c) for c in o.choices) + ")"
    return " "  # a message only: nothing to complete


def _zsh_opt(o: Opt, prog: str) -> str:
    def spelled(n: str) -> str:
        if not o.takes_value:
            return n
        return n + ("+" if len(n) == 2 and not n.startswith("--") else "=")

    lead = "*" if o.repeat else (f"({' '.join(o.excludes)})" if len(o.excludes) > 1 else "")
    tail = f"[{_zsh_desc(o.help)}]" if o.help else ""
    if o.takes_value:
        tail += f":{_zsh_colon(o.metavar)}:{_zsh_action(o, prog)}"
    if len(o.names) == 1:
        return _sq(lead + spelled(o.names[0]) + tail)
    return (_sq(lead) if lead else "") + "{" + ",".join(spelled(n) for n in o.names) + "}" + _sq(tail)


def _zsh_arg(a: Arg, prog: str) -> str:
    colons = "*:" if a.many else (":" if a.required else "::")
    message = _zsh_colon(a.help or a.name)
    return _sq(f"{colons}{message}:{_zsh_action(a, prog)}")


def zsh(tree: Node, prog: str, header: str) -> str:
    fn = _function_names(tree, f"_{prog}")
    out = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}",
        f"# {header}",
        f"# Install: {prog} completion zsh > ~/.zfunc/_{prog}  (with fpath=(~/.zfunc $fpath) before compinit)",
        f"#      or: source <({prog} completion zsh)  (after compinit)",
        "",
        f"_{prog}_file_or_dash() {{",
        "    _alternative 'files:file:_files' 'dash:standard input/output:(-)'",
        "}",
        "",
    ]
    for node in reversed(list(tree.walk())):  # helpers first, the entry function last
        out += _zsh_node(node, fn, prog)
    out += [
        f'if [[ "$funcstack[1]" == "_{prog}" ]]; then',
        f'    _{prog} "$@"',
        "else",
        f"    compdef _{prog} {prog}",
        "fi",
        "",
    ]
    return "\n".join(out)


def _zsh_node(node: Node, fn: dict[tuple[str, ...], str], prog: str) -> list[str]:
    name = fn[node.path]
    label = " ".join((prog, *node.path))
    specs = [_zsh_opt(o, prog) for o in node.options]
    if not node.is_group:
        specs += [_zsh_arg(a, prog) for a in node.args]
        lines = [f"# {label}", f"{name}() {{", "    _arguments -s -S \\"]
        lines += [f"        {s} \\" for s in specs[:-1]] + [f"        {specs[-1]}" if specs else "        ''"]
        return [*lines, "}", ""]
    lines = [
        f"# {label}",
        f"{name}_commands() {{",
        "    local -a commands",
        "    commands=(",
    ]
    for c in node.children:
        lines.append(f"        {_sq(_zsh_colon(c.path[-1]) + ':' + c.help)}")
    lines += [
        "    )",
        f"    _describe -t commands {_sq(label + ' command')} commands",
        "}",
        "",
        f"{name}() {{",
        '    local curcontext="$curcontext" state state_descr line ret=1',
        "    typeset -A opt_args",
        "    _arguments -C -s -S \\",
    ]
    lines += [f"        {s} \\" for s in specs]
    lines += [
        f"        ': :{name}_commands' \\",
        "        '*:: :->args' && ret=0",
        "    case $state in",
        "    (args)",
        f'        curcontext="${{curcontext%:*:*}}:{"-".join((prog, *node.path))}-$words[1]:"',
        "        case $words[1] in",
    ]
    for c in node.children:
        lines.append(f"        ({_zsh_pattern(c.path[-1])}) {fn[c.path]} && ret=0 ;;")
    lines += ["        esac", "        ;;", "    esac", "    return ret", "}", ""]
    return lines


def _zsh_pattern(word: str) -> str:
    return re.sub(r"([^A-Za-z0-9_.-])", r"\\\1", word)


# ------------------------------------------------------------------------------------------------ fish


def _fq(text: str) -> str:
    """Single-quote for fish (backslash and quote are the only escapes inside)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_names(names: tuple[str, ...]) -> str:
    parts = []
    for n in names:
        if n.startswith("--"):
            parts.append(f"-l {_fq(n[2:]) if not re.fullmatch(r'[A-Za-z0-9_-]+', n[2:]) else n[2:]}")
        elif len(n) == 2:
            parts.append(f"-s {n[1:]}")
        else:
            parts.append(f"-o {n[1:]}")
    return " ".join(parts)


def _fish_value(o: Opt | Arg) -> str:
    if o.kind == "file":
        return "-F -a -" if o.dash else "-F"
    if o.kind == "dir":
        return "-f -a '(__fish_complete_directories (commandline -ct))'"
    if o.kind == "choice":
        return "-f -a " + _fq(" ".join(o.choices))
    return "-f"


def fish(tree: Node, prog: str, header: str) -> str:
    group_vopts = sorted({n for node in tree.walk() if node.is_group for n in node.value_options()})
    out = [
        f"# fish completion for {prog}",
        f"# {header}",
        f"# Install: {prog} completion fish > ~/.config/fish/completions/{prog}.fish",
        "",
        f"function __{prog}_words --description 'subcommand words typed so far'",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        "    set -l skip 0",
        "    for t in $tokens",
        "        if test $skip -eq 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        switch $t",
    ]
    if group_vopts:
        out += ["            case " + " ".join(_fq(n) for n in group_vopts), "                set skip 1"]
    out += [
        "            case '-*'",
        "                continue",
        "            case '*'",
        "                echo $t",
        "        end",
        "    end",
        "end",
        "",
        f"function __{prog}_at --description 'exactly these subcommand words were typed'",
        f"    set -l words (__{prog}_words)",
        '    test "$words" = "$argv"',
        "end",
        "",
        f"function __{prog}_in --description 'the subcommand words typed start with these'",
        f"    set -l words (__{prog}_words)",
        "    set -l n (count $argv)",
        '    test (count $words) -ge $n; and test "$words[1..$n]" = "$argv"',
        "end",
        "",
        f"complete -c {prog} -f  # file names only where an option or argument takes them",
    ]
    for node in tree.walk():
        path = " ".join(node.path)
        where = f"__{prog}_at {path}".rstrip() if node.is_group else f"__{prog}_in {path}"
        cond = f"-n {_fq(where)}"
        out += ["", f"# {' '.join((prog, *node.path))}"]
        for c in node.children:
            out.append(f"complete -c {prog} {cond} -a {_fq(c.path[-1])} -d {_fq(c.help)}")
        for o in node.options:
            value = f" -r {_fish_value(o)}" if o.takes_value else ""
            help_ = f" -d {_fq(o.help)}" if o.help else ""
            out.append(f"complete -c {prog} {cond} {_fish_names(o.names)}{value}{help_}")
        if not node.is_group:
            for a in node.args:
                if a.kind != "none":
                    out.append(f"complete -c {prog} {cond} {_fish_value(a)}")
    out.append("")
    return "\n".join(out)
