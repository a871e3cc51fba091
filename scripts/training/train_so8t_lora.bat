@echo off
rem Runbook shim for Windows: the same as  py scripts\training\train_so8t_lora.py ARGS
rem (the repository's .venv Python when set up with  py -m so8t.setup setup, else the py launcher).
setlocal
set "SO8T_PY=%~dp0..\..\.venv\Scripts\python.exe"
if not exist "%SO8T_PY%" set "SO8T_PY=py"
"%SO8T_PY%" "%~dp0train_so8t_lora.py" %*
exit /b %ERRORLEVEL%
