"""What pyproject.toml cannot say without an experimental table: the C extension, and the
top-level ``sql/`` folder shipped inside the package.

csvstore/analysis/_scan.c is the profiler's record counter (docs/design/profiler.md). It is
optional: where no C compiler is found the install still succeeds and the profiler uses its
pure-Python counter, with the same results, more slowly.

``sql/`` stays at the top of the repository (named queries and migrations, reviewed as SQL)
and is copied to ``csvstore/sql/`` in every built wheel; csvstore/db/queries.py looks there
first and falls back to the repository's folder in an editable install.
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithSql(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "csvstore" / "sql"
            shutil.copytree(Path(__file__).parent / "sql", target, dirs_exist_ok=True)


setup(
    cmdclass={"build_py": BuildPyWithSql},
    ext_modules=[
        Extension("csvstore.analysis._scan", ["csvstore/analysis/_scan.c"], optional=True)
    ],
)
