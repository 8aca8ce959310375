//! Running untrusted Python (HumanEval completions) in a contained `python3` process.
//!
//! Layers, each where the OS allows it:
//! - its own temporary work folder, removed afterwards; the process starts there with an empty
//!   environment (`PATH`, `HOME` and `TMPDIR` point inside or at system folders only);
//! - resource limits (`setrlimit`): address space, CPU seconds, file size, processes, no core files;
//! - a wall-clock timeout that kills the whole process group;
//! - no network: a fresh network namespace (`unshare`), when the kernel and container permit;
//! - run as root, the process drops to user `nobody`, so the file system protects everything
//!   outside its folder;
//! - a Python-level guard, installed before the program runs (in the spirit of the HumanEval
//!   harness's): writes outside the work folder, deleting or renaming files, starting processes,
//!   signals, `ctypes` and exiting early are refused.
//!
//! A program passes only when it runs to its end: an exception, `sys.exit`, a killed process or
//! a timeout is a failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{EvalError, Result};

/// Limits of one sandboxed run.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The Python interpreter.
    pub python: PathBuf,
    /// Wall-clock limit per program.
    pub timeout: Duration,
    /// Address-space limit in MiB.
    pub memory_mib: u64,
    /// Most processes (threads count) the program's user may have.
    pub max_processes: u64,
    /// Largest file the program may write, in MiB.
    pub max_file_mib: u64,
    /// Where the work folders are made (default: the system's temporary folder).
    pub temp_root: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("python3"),
            timeout: Duration::from_secs(10),
            memory_mib: 1024,
            max_processes: 64,
            max_file_mib: 16,
            temp_root: None,
        }
    }
}

/// Which OS-level protections are in force (reported with the results).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Isolation {
    /// The program has its own, empty network namespace.
    pub network: bool,
    /// The program runs as `nobody` (we were root).
    pub unprivileged_user: bool,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The program ran to its end.
    Passed,
    /// It raised, exited early, or was killed by a limit.
    Failed,
    /// The wall-clock timeout killed it.
    TimedOut,
}

/// One run's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Execution {
    /// Passed, failed or timed out.
    pub verdict: Verdict,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The end of its standard error (the traceback).
    pub stderr_tail: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs programs under [`SandboxConfig`]'s limits.
///
/// ```no_run
/// use idlora_eval::sandbox::{Sandbox, SandboxConfig, Verdict};
/// let sandbox = Sandbox::new(SandboxConfig::default())?;
/// assert_eq!(sandbox.run("assert 1 + 1 == 2")?.verdict, Verdict::Passed);
/// assert_eq!(sandbox.run("while True: pass")?.verdict, Verdict::TimedOut);
/// # Ok::<(), idlora_eval::EvalError>(())
/// ```
pub struct Sandbox {
    cfg: SandboxConfig,
    isolation: Isolation,
    // A private root (mode 0711) holding the per-run folders.
    root: tempfile::TempDir,
}

const NOBODY: u32 = 65534;

/// The Python-level guard and runner: installed before the program, which it then executes.
const RUNNER: &str = r#"
import builtins, os, sys
_exit = os._exit
_root = os.path.realpath(os.getcwd())
with open("program.py", encoding="utf-8") as f:
    _source = f.read()

def _inside(path):
    if isinstance(path, int):
        return True
    path = os.fsdecode(os.fspath(path))
    full = os.path.realpath(os.path.join(_root, path))
    return full == _root or full.startswith(_root + os.sep)

_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: writing outside the work folder is refused: {file!r}")
    return _open(file, mode, *args, **kwargs)
builtins.open = _guarded_open
import io
io.open = _guarded_open

_os_open = os.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE and not _inside(path):
        raise PermissionError(f"sandbox: writing outside the work folder is refused: {path!r}")
    return _os_open(path, flags, *args, **kwargs)
os.open = _guarded_os_open

def _refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is disabled")
    return refused

for _name in ["system", "popen", "kill", "killpg", "fork", "forkpty", "_exit", "abort",
              "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
              "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
              "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "rename",
              "renames", "replace", "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown",
              "lchown", "link", "symlink", "mkfifo", "mknod", "chdir", "fchdir", "chroot",
              "setuid", "seteuid", "setgid", "putenv", "unsetenv"]:
    if hasattr(os, _name):
        setattr(os, _name, _refuse("os." + _name))
import shutil, subprocess
for _name in ["rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree"]:
    setattr(shutil, _name, _refuse("shutil." + _name))
for _name in ["Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"]:
    setattr(subprocess, _name, _refuse("subprocess." + _name))
for _name in ["ctypes", "_ctypes", "multiprocessing", "resource"]:
    sys.modules[_name] = None

try:
    exec(compile(_source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except SystemExit as e:
    sys.stderr.write(f"sandbox: the program exited ({e.code!r}) before its end\n")
    sys.stderr.flush()
    _exit(3)
sys.stdout.flush()
sys.stderr.flush()
_exit(0)
"#;

impl Sandbox {
    /// Checks that the interpreter runs and finds which protections the OS grants.
    pub fn new(cfg: SandboxConfig) -> Result<Self> {
        let base = cfg.temp_root.clone().unwrap_or_else(std::env::temp_dir);
        let root = tempfile::Builder::new()
            .prefix("idlora-sandbox-")
            .tempdir_in(&base)
            .map_err(|source| EvalError::Io { path: base.clone(), source })?;
        set_mode(root.path(), 0o711)?;
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        let mut sandbox =
            Sandbox { cfg, isolation: Isolation { network: false, unprivileged_user: is_root }, root };
        // Probe: the interpreter must run at all; the network namespace is used when it works.
        let plain = sandbox.spawn_probe(false)?;
        if !plain {
            return Err(EvalError::Sandbox(format!(
                "`{}` does not run; install Python 3 or pass another interpreter",
                sandbox.cfg.python.display()
            )));
        }
        sandbox.isolation.network = sandbox.spawn_probe(true)?;
        Ok(sandbox)
    }

    /// The protections in force.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The limits.
    pub fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    fn spawn_probe(&self, network: bool) -> Result<bool> {
        let mut cmd = Command::new(&self.cfg.python);
        cmd.args(["-I", "-c", "pass"])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.contain(&mut cmd, network);
        Ok(cmd.status().is_ok_and(|s| s.success()))
    }

    /// Sets the limits, namespace and user a child takes on before it runs Python.
    fn contain(&self, cmd: &mut Command, network: bool) {
        use std::os::unix::process::CommandExt;
        let limits = [
            (libc::RLIMIT_AS, self.cfg.memory_mib << 20),
            (libc::RLIMIT_CPU, self.cfg.timeout.as_secs() + 1),
            (libc::RLIMIT_FSIZE, self.cfg.max_file_mib << 20),
            (libc::RLIMIT_NPROC, self.cfg.max_processes),
            (libc::RLIMIT_CORE, 0),
        ];
        let drop_user = self.isolation.unprivileged_user;
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe libc functions on values captured by copy; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, value) in limits {
                    let lim =
                        libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if network {
                    // As root a network namespace needs no user namespace; otherwise one makes
                    // the unprivileged unshare possible.
                    let flags =
                        if drop_user { libc::CLONE_NEWNET } else { libc::CLONE_NEWUSER | libc::CLONE_NEWNET };
                    if libc::unshare(flags) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if drop_user
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(NOBODY) != 0
                        || libc::setuid(NOBODY) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs `program` (Python source) and reports how it ended.
    pub fn run(&self, program: &str) -> Result<Execution> {
        let work = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(self.root.path())
            .map_err(|source| EvalError::Io { path: self.root.path().to_path_buf(), source })?;
        let dir = work.path();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| EvalError::Io { path, source })
        };
        write("program.py", program)?;
        write("runner.py", RUNNER)?;
        if self.isolation.unprivileged_user {
            std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY))
                .map_err(|source| EvalError::Io { path: dir.to_path_buf(), source })?;
        }
        let mut cmd = Command::new(&self.cfg.python);
        cmd.args(["-I", "-B", "runner.py"])
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.contain(&mut cmd, self.isolation.network);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| EvalError::Sandbox(format!("starting `{}`: {e}", self.cfg.python.display())))?;
        let pid = child.id() as libc::pid_t;
        // Drain the pipes on threads (a chatty program must not block on a full pipe); keep 64 KiB.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                if let Some(mut p) = pipe {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = p.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 1 << 16 {
                            kept.drain(..kept.len() - (1 << 16));
                        }
                    }
                }
                kept
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() >= self.cfg.timeout => {
                    timed_out = true;
                    // SAFETY: kill has no memory-safety preconditions; -pid names the group.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    break child.wait().map_err(|e| EvalError::Sandbox(format!("waiting: {e}")))?;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(EvalError::Sandbox(format!("waiting: {e}"))),
            }
        };
        // Anything the program left behind in its group goes too.
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let seconds = start.elapsed().as_secs_f64();
        let _ = out.join();
        let stderr = err.join().unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        let verdict = if timed_out {
            Verdict::TimedOut
        } else if status.code() == Some(0) {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        let text = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        Ok(Execution {
            verdict,
            exit_code: status.code(),
            signal: status.signal(),
            stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            seconds,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| EvalError::Io { path: path.to_path_buf(), source })
}
