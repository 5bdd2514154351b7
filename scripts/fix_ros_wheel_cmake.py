"""Point the ROS wheels' exported CMake include paths at this interpreter's headers and numpy.

The Kilted wheels were built in a manylinux container, and their `*__rosidl_generator_pyExport.cmake` files carry
that container's absolute include directories (`/opt/python/cp311-cp311/include/python3.11` and its numpy). Building
a message package against them fails until those paths name this venv's Python headers and numpy. Safe to re-run:
the include line is rewritten from scratch each time (needed again if numpy crosses 1.x/2.x).
"""

import re
import sys
import sysconfig
from pathlib import Path

import numpy

INCLUDE_LINE = re.compile(r'INTERFACE_INCLUDE_DIRECTORIES "[^"]*"')


def main() -> int:
    include_dirs = f'{sysconfig.get_paths()["include"]};{numpy.get_include()}'
    share = Path(sys.prefix) / 'share'
    rewritten = 0
    for export_file in share.glob('*/cmake/export_*__rosidl_generator_pyExport.cmake'):
        text = export_file.read_text()
        fixed = INCLUDE_LINE.sub(f'INTERFACE_INCLUDE_DIRECTORIES "{include_dirs}"', text)
        if fixed != text:
            export_file.write_text(fixed)
            rewritten += 1
    print(f'fix_ros_wheel_cmake: {rewritten} export files now include {include_dirs}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
