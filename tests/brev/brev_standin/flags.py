"""Command-line flags parsed the way cobra/pflag parse them (interspersed, ``--f=v``, ``-fv``, ``--``)."""


GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


class CliError(Exception):
    """An error the CLI prints on stderr (one message) before exiting 1."""


class Flag:
    """One flag: its long name, optional shorthand, kind (bool, str, int, float) and default."""

    def __init__(self, name, short="", kind="str", default=None):
        self.name = name
        self.short = short
        self.kind = kind
        if default is None:
            default = {"bool": False, "str": "", "int": 0, "float": 0.0}[kind]
        self.default = default

    def display(self):
        """The name pflag puts in 'invalid argument' errors."""
        if self.short:
            return "-%s, --%s" % (self.short, self.name)
        return "--" + self.name

    def convert(self, text):
        """The typed value of ``text``, or the error pflag gives."""
        try:
            if self.kind == "bool":
                if text not in GO_BOOLS:
                    raise ValueError("strconv.ParseBool: parsing %s: invalid syntax" % go_quote(text))
                return GO_BOOLS[text]
            if self.kind == "int":
                try:
                    return int(text, 10)
                except ValueError:
                    raise ValueError("strconv.ParseInt: parsing %s: invalid syntax" % go_quote(text)) from None
            if self.kind == "float":
                try:
                    return float(text)
                except ValueError:
                    raise ValueError("strconv.ParseFloat: parsing %s: invalid syntax" % go_quote(text)) from None
            return text
        except ValueError as exc:
            raise CliError("invalid argument %s for %s flag: %s" % (go_quote(text), go_quote(self.display()), exc)) from None


def go_quote(text):
    """Go's %q of a plain string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


GLOBAL_FLAGS = [
    Flag("help", "h", "bool"),
    Flag("user"),
    Flag("version", kind="bool"),
    Flag("no-check-latest", kind="bool"),
]


def parse(args, flags):
    """Split ``args`` into ({flag name: value}, [positional args]) as pflag does, global flags included."""
    every = list(flags) + GLOBAL_FLAGS
    by_long = {flag.name: flag for flag in every}
    by_short = {flag.short: flag for flag in every if flag.short}
    values = {flag.name: flag.default for flag in every}
    changed = set()
    positional = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positional.extend(args[index:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, has_value, value = arg[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                raise CliError("unknown flag: --%s" % name)
            if not has_value:
                if flag.kind == "bool":
                    value = "true"
                elif index < len(args):
                    value = args[index]
                    index += 1
                else:
                    raise CliError("flag needs an argument: --%s" % name)
            values[flag.name] = flag.convert(value)
            changed.add(flag.name)
        elif arg.startswith("-") and len(arg) > 1:
            shorts = arg[1:]
            position = 0
            while position < len(shorts):
                letter = shorts[position]
                position += 1
                flag = by_short.get(letter)
                if flag is None:
                    raise CliError("unknown shorthand flag: '%s' in -%s" % (letter, shorts))
                if flag.kind == "bool":
                    if position < len(shorts) and shorts[position] == "=":
                        values[flag.name] = flag.convert(shorts[position + 1:])
                        position = len(shorts)
                    else:
                        values[flag.name] = True
                else:
                    rest = shorts[position:]
                    if rest.startswith("="):
                        rest = rest[1:]
                    if rest:
                        value = rest
                    elif index < len(args):
                        value = args[index]
                        index += 1
                    else:
                        raise CliError("flag needs an argument: '%s' in -%s" % (letter, shorts))
                    values[flag.name] = flag.convert(value)
                    position = len(shorts)
                changed.add(flag.name)
        else:
            positional.append(arg)
    values["__changed__"] = changed
    return values, positional
