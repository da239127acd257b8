"""The one exception type a user's mistake raises; the command line turns it into one line."""


class HoarfrostError(Exception):
    """A problem with the user's input (file, model, option) rather than a bug in hoarfrost.

    The message names the cause and where it is (file, node, layer or option); the command line
    prints it as ``hoarfrost: error: <message>`` and exits with status 2.
    """
