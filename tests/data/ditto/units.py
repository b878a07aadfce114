import os


def walk(root):
    out = []
    for dirpath, _, names in os.walk(root):

        for name in names:
            out.append(os.path.join(dirpath, name))
    return (
        sorted(out)
    )


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y
