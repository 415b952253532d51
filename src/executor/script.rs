//! Scripts: a JavaScript or Python workflow runs in its language's
//! runtime module, with the script's text as a WASI argument of its first
//! run (`--source NAME SOURCE`, see `guest-workflows/js/runtime.c` and
//! `guest-workflows/python/src/main.rs`). The runtime reads it before its
//! first suspension; from then on the script lives, compiled, in the
//! interpreter's heap, which every version holds. `wasnap run approval.js`
//! and the service's `POST /api/instances` with a `script` both start one
//! this way.
//!
//! ```no_run
//! use wasnap::executor::script::{self, Language};
//! use wasnap::executor::{Executor, RunOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! let source = std::fs::read_to_string("approval.js")?;
//! let language = Language::of_name("approval.js").expect("a script");
//! let executor = Executor::open("wasnap.db")?;
//! let runtime = executor.add_module(&language.runtime()?)?;
//! let args = script::arguments("approval.js", source, Vec::new());
//! executor.start(&runtime, &args, &RunOptions::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! The runtime module is looked for, in this order:
//!
//! 1. `$WASNAP_RUNTIMES/<runtime>.wasm`, when that variable is set;
//! 2. beside the `wasnap` executable;
//! 3. in `guest-workflows/out/<language>/` of the source tree wasnap was
//!    built from, where `guest-workflows/build` puts it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};

use super::Executor;
use crate::snapshot::ModuleHash;

/// The variable naming a directory of runtime modules.
const RUNTIMES_VARIABLE: &str = "WASNAP_RUNTIMES";

/// A language whose scripts run in a runtime module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    /// `.js`, run by QuickJS-ng (`js.wasm`).
    JavaScript,
    /// `.py`, run by RustPython (`python.wasm`).
    Python,
}

impl Language {
    /// The language of a script file, by its extension; `None` for a
    /// module.
    pub fn of(path: &Path) -> Option<Language> {
        match path.extension()?.to_str()? {
            "js" => Some(Language::JavaScript),
            "py" => Some(Language::Python),
            _ => None,
        }
    }

    /// The language of a script named `name` (`approval.js`), by its
    /// extension.
    pub fn of_name(name: &str) -> Option<Language> {
        Language::of(Path::new(name))
    }

    fn name(self) -> &'static str {
        match self {
            Language::JavaScript => "JavaScript",
            Language::Python => "Python",
        }
    }

    /// The build's name for the language, which is also its runtime's.
    fn build_name(self) -> &'static str {
        match self {
            Language::JavaScript => "js",
            Language::Python => "python",
        }
    }

    fn runtime_file(self) -> String {
        format!("{}.wasm", self.build_name())
    }

    /// The places the runtime module is looked for, in order.
    fn runtime_candidates(self) -> Vec<PathBuf> {
        let file = self.runtime_file();
        if let Some(directory) = std::env::var_os(RUNTIMES_VARIABLE) {
            return vec![PathBuf::from(directory).join(file)];
        }
        let mut candidates = Vec::new();
        if let Some(directory) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        {
            candidates.push(directory.join(&file));
        }
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("guest-workflows/out")
                .join(self.build_name())
                .join(file),
        );
        candidates
    }

    /// The runtime module's bytes, from the first place that has it (see
    /// the module's documentation).
    pub fn runtime(self) -> Result<Vec<u8>> {
        let path = self.runtime_path()?;
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The runtime module's file: the first place that has it (see the
    /// module's documentation).
    pub fn runtime_path(self) -> Result<PathBuf> {
        let candidates = self.runtime_candidates();
        if let Some(path) = candidates.iter().find(|path| path.is_file()) {
            return Ok(path.clone());
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "the {} runtime {} was not found (looked for {}): build it with guest-workflows/build {} in wasnap's source tree, or set {RUNTIMES_VARIABLE} to a directory holding it",
            self.name(),
            self.runtime_file(),
            looked.join(", "),
            self.build_name()
        )
    }
}

/// The runtime modules a long-lived host (the service) has added to its
/// database, remembered so that starting a script does not read and hash
/// its runtime again (12 MB for Python) while the runtime's file is
/// unchanged. A file that changed (another size or modification time) is
/// added again.
#[derive(Debug, Default)]
pub struct Runtimes {
    added: Mutex<HashMap<Language, AddedRuntime>>,
}

/// A runtime file as it was when it was added, and its module's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AddedRuntime {
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    hash: ModuleHash,
}

impl Runtimes {
    /// The hash of `language`'s runtime module, added to `executor`'s
    /// database (and compiled) the first time and whenever its file changed.
    pub fn add(&self, executor: &Executor, language: Language) -> Result<ModuleHash> {
        self.add_file(executor, language, &language.runtime_path()?)
    }

    fn add_file(&self, executor: &Executor, language: Language, path: &Path) -> Result<ModuleHash> {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (len, modified) = (metadata.len(), metadata.modified()?);
        let unchanged = |added: &AddedRuntime| {
            added.path == path && added.len == len && added.modified == modified
        };
        if let Some(added) = self.added().get(&language).filter(|added| unchanged(added)) {
            return Ok(added.hash);
        }
        let wasm =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let hash = executor.add_module(&wasm)?;
        let added = AddedRuntime {
            path: path.to_path_buf(),
            len,
            modified,
            hash,
        };
        self.added().insert(language, added);
        Ok(hash)
    }

    fn added(&self) -> MutexGuard<'_, HashMap<Language, AddedRuntime>> {
        // The map holds no invariant a panic elsewhere could break.
        self.added
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The WASI arguments that run the script `name` with text `source` and
/// its own `args`: the name (the program's), then `--source NAME SOURCE`.
pub fn arguments(name: &str, source: String, args: Vec<String>) -> Vec<String> {
    [
        name.to_string(),
        "--source".into(),
        name.to_string(),
        source,
    ]
    .into_iter()
    .chain(args)
    .collect()
}

/// A script's start as [`arguments`] wrote it into an instance's WASI
/// arguments, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptStart<'a> {
    /// The script's file name (`approval.js`).
    pub name: &'a str,
    /// Its text.
    pub source: &'a str,
    /// Its own arguments, after the source.
    pub args: &'a [String],
}

/// The script an instance's WASI `args` start, if they are the
/// [`arguments`] of one: `NAME --source NAME SOURCE ARGS...` with a name
/// of a known language. `None` for a module's own arguments.
pub fn started_by(args: &[String]) -> Option<ScriptStart<'_>> {
    match args {
        [name, flag, again, source, rest @ ..]
            if flag == "--source" && name == again && Language::of_name(name).is_some() =>
        {
            Some(ScriptStart {
                name,
                source,
                args: rest,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module that asks `question` (eight bytes, so that two of them have
    /// files of the same size).
    fn module_asking(question: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 0) "{question}")
                 (func (export "run") (drop (call $yield (i32.const 0) (i32.const 8)))))"#
        ))
        .unwrap()
    }

    #[test]
    fn a_runtime_is_read_again_only_when_its_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::open(dir.path().join("wasnap.db")).unwrap();
        let path = dir.path().join("js.wasm");
        let (first, second) = (module_asking("approve?"), module_asking("approve!"));
        assert_eq!(first.len(), second.len());
        std::fs::write(&path, &first).unwrap();
        let runtimes = Runtimes::default();
        let added = |runtimes: &Runtimes| {
            runtimes
                .add_file(&executor, Language::JavaScript, &path)
                .unwrap()
        };
        let first_hash = added(&runtimes);
        assert_eq!(first_hash, crate::runtime::module_hash(&first));

        // Other bytes under the same size and time: the file is taken as
        // unchanged, which shows that it was not read again.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, &second).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(modified).unwrap();
        assert_eq!(added(&runtimes), first_hash);

        // A new modification time: read, added and compiled again.
        file.set_modified(modified + std::time::Duration::from_secs(1))
            .unwrap();
        let second_hash = added(&runtimes);
        assert_eq!(second_hash, crate::runtime::module_hash(&second));
        assert!(executor.engine().cached(&second_hash).is_some());
        // Another host starts from nothing and reads the file.
        assert_eq!(added(&Runtimes::default()), second_hash);
    }

    #[test]
    fn a_script_start_reads_back_from_its_arguments() {
        let args = arguments("deploy.py", "print(1)".into(), vec!["eu".into()]);
        let start = started_by(&args).unwrap();
        assert_eq!(start.name, "deploy.py");
        assert_eq!(start.source, "print(1)");
        assert_eq!(start.args, ["eu".to_string()]);
    }

    #[test]
    fn a_module_s_own_arguments_are_no_script() {
        let strings = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(started_by(&strings(&["workflow"])), None);
        assert_eq!(started_by(&strings(&["w", "--source", "w", "x"])), None);
        assert_eq!(
            started_by(&strings(&["a.js", "--source", "b.js", "x"])),
            None
        );
    }
}
