#!/usr/bin/env bash
# Install what Testing/test_web_app.py needs to drive the web app in a real browser:
# Debian's chromium (headless), Mesa's EGL for VTK's offscreen rendering, and the playwright
# Python package (which drives /usr/bin/chromium; `playwright install` is never run).
# Idempotent: does nothing that is already done.
set -euo pipefail
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
# Mesa EGL (software rendering, no GPU or X server needed) for VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow
dpkg -s libegl1 >/dev/null 2>&1 || packages+=(libegl1)
dpkg -s libegl-mesa0 >/dev/null 2>&1 || packages+=(libegl-mesa0)
dpkg -s libgl1-mesa-dri >/dev/null 2>&1 || packages+=(libgl1-mesa-dri)
if [ ${#packages[@]} -gt 0 ]; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
fi
python -c "import playwright" 2>/dev/null || python -m pip install "playwright>=1.40"
