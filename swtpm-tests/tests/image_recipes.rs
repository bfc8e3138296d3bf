//! The vendor recipes install the files the boot tests install: one source of
//! truth, `images/rootfs`. Every file there is installed by the Buildroot tree
//! (`images/buildroot`) and by the Yocto layer (`images/yocto`), with the same mode
//! and at the same place; neither refers to a file that is not there; the users
//! they make are the ones sysusers.d makes; and the kernel fragment
//! (`images/kernel/tpm.cfg`) both use is well formed and, when the systemd guest's
//! root filesystem is cached, enabled in Debian's kernel.
//!
//! Buildroot and Yocto themselves do not run here: a build fetches their sources
//! and takes hours. The files are checked as text against their documented formats
//! (Buildroot's generic-package and makeusers syntax, BitBake's `install` lines
//! and `file://` URIs); `images/systemd-guest.sh` boots the same overlay under
//! systemd.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn images() -> PathBuf {
    tessera_swtpm_tests::repo_root().join("images")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Files of `dir` whose names end with `suffix`, recursively.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with(suffix))
        .map(|f| dir.join(f))
        .collect()
}

/// What a recipe installs from the overlay: source path (relative to
/// `images/rootfs`) to (mode, destination on the target).
type Installs = BTreeMap<String, (String, String)>;

/// Adds `(source, mode, destination)` to `all`, failing on a file installed twice.
fn add(all: &mut Installs, what: &str, src: &str, mode: &str, dest: String) {
    if let Some(prev) = all.insert(src.to_string(), (mode.to_string(), dest)) {
        panic!("{what} installs {src} twice (also as {prev:?})");
    }
}

/// The words of an install line after `-D -m`: mode, source, destination.
fn install_words<'a>(line: &'a str, tool: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = line.trim().strip_prefix(tool)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["-D", "-m", mode, src, dest] => Some((mode, src, dest)),
        _ => panic!("an install line not of the form `{tool} -D -m MODE SRC DEST`: {line}"),
    }
}

/// Buildroot: the `$(INSTALL) -D -m MODE $(X_ROOTFS)/path $(TARGET_DIR)/dest` lines
/// of every package, where `X_ROOTFS = $(BR2_EXTERNAL_TESSERA_PATH)/../rootfs`.
fn buildroot_installs() -> Installs {
    let tree = images().join("buildroot");
    let mut all = Installs::new();
    let mks = files_ending(&tree.join("package"), ".mk");
    assert!(mks.len() >= 2, "no packages in {}", tree.display());
    for mk in mks {
        let text = read(&mk);
        let pkg = mk.file_stem().unwrap().to_string_lossy().replace('-', "_");
        let var = format!("{}_ROOTFS", pkg.to_uppercase());
        assert!(
            text.contains(&format!("{var} = $(BR2_EXTERNAL_TESSERA_PATH)/../rootfs\n")),
            "{} does not take its files from images/rootfs as {var}",
            mk.display()
        );
        // The external tree's path resolves to images/buildroot, so ../rootfs is
        // images/rootfs.
        let src_prefix = format!("$({var})/");
        for line in text.lines() {
            let Some((mode, src, dest)) = install_words(line, "$(INSTALL)") else {
                continue;
            };
            let dest = dest
                .strip_prefix("$(TARGET_DIR)")
                .unwrap_or_else(|| panic!("{}: not into $(TARGET_DIR): {line}", mk.display()));
            if let Some(rel) = src.strip_prefix(&src_prefix) {
                add(&mut all, "the Buildroot tree", rel, mode, dest.to_string());
            } else {
                // Only the binary comes from elsewhere.
                assert!(
                    dest.starts_with("/usr/bin/tessera-") && mode == "0755",
                    "{}: installs {src} from outside images/rootfs: {line}",
                    mk.display()
                );
            }
        }
    }
    all
}

/// BitBake variables the Yocto recipes install to, as a distribution with systemd
/// has them (systemd needs the usrmerge distro feature, so the base library
/// folder is /usr/lib).
fn yocto_path(dest: &str) -> String {
    const VARS: [(&str, &str); 5] = [
        ("${systemd_system_unitdir}", "/usr/lib/systemd/system"),
        ("${nonarch_base_libdir}", "/usr/lib"),
        ("${nonarch_libdir}", "/usr/lib"),
        ("${sysconfdir}", "/etc"),
        ("${bindir}", "/usr/bin"),
    ];
    for (var, path) in VARS {
        if let Some(rest) = dest.strip_prefix(var) {
            return format!("{path}{rest}");
        }
    }
    panic!("the Yocto layer installs to {dest}: a folder variable this test does not know")
}

/// The `file://` entries of a recipe's `SRC_URI`.
fn src_uri_files(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("file://"))
        .filter(|f| !f.starts_with("${COMMON_LICENSE_DIR}"))
        .map(|f| f.trim_end_matches('"').to_string())
        .collect()
}

/// Yocto: the `install -D -m MODE ${TESSERA_FILES}/path ${D}dest` lines of every
/// recipe, each source also fetched (`file://path` in SRC_URI, found through
/// `FILESEXTRAPATHS` = images/rootfs).
fn yocto_installs() -> Installs {
    let layer = images().join("yocto");
    let mut all = Installs::new();
    let recipes = files_ending(&layer, ".bb");
    assert!(recipes.len() >= 2, "no recipes in {}", layer.display());
    for bb in recipes {
        let text = read(&bb);
        // FILESEXTRAPATHS resolves, from the recipe's folder, to images/rootfs.
        let extra = text
            .lines()
            .find_map(|l| l.strip_prefix("FILESEXTRAPATHS:prepend := \"${THISDIR}/"))
            .unwrap_or_else(|| panic!("{}: no FILESEXTRAPATHS", bb.display()));
        let extra = extra.trim_end_matches(":\"");
        let dir = bb.parent().unwrap().join(extra).canonicalize().unwrap();
        assert_eq!(
            dir,
            images().join("rootfs").canonicalize().unwrap(),
            "{}",
            bb.display()
        );
        let fetched = src_uri_files(&text);
        let mut installed = Vec::new();
        for line in text.lines() {
            let Some((mode, src, dest)) = install_words(line, "install") else {
                continue;
            };
            let dest = dest
                .strip_prefix("${D}")
                .unwrap_or_else(|| panic!("{}: not into ${{D}}: {line}", bb.display()));
            if let Some(rel) = src.strip_prefix("${TESSERA_FILES}/") {
                add(&mut all, "the Yocto layer", rel, mode, yocto_path(dest));
                installed.push(rel.to_string());
            } else {
                assert!(
                    src.starts_with("${TESSERA_") && src.ends_with("_BINARY}") && mode == "0755",
                    "{}: installs {src} from outside images/rootfs: {line}",
                    bb.display()
                );
            }
        }
        installed.sort();
        let mut fetched_sorted = fetched.clone();
        fetched_sorted.sort();
        assert_eq!(
            fetched_sorted,
            installed,
            "{}: SRC_URI fetches other files than it installs",
            bb.display()
        );
    }
    all
}

/// The mode a file of the overlay is installed with: as it is in the repository.
fn repo_mode(path: &Path) -> &'static str {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    if mode & 0o111 != 0 { "0755" } else { "0644" }
}

#[test]
fn both_recipes_install_every_overlay_file_with_the_same_mode_and_place() {
    let rootfs = images().join("rootfs");
    let files = files_under(&rootfs);
    assert!(files.len() >= 8, "images/rootfs has only {files:?}");
    let br = buildroot_installs();
    let yocto = yocto_installs();
    for (what, installs) in [("the Buildroot tree", &br), ("the Yocto layer", &yocto)] {
        for (src, (mode, dest)) in installs {
            assert!(
                rootfs.join(src).is_file(),
                "{what} installs images/rootfs/{src}, which does not exist"
            );
            // Installed where the overlay has it, as the boot tests copy it.
            assert_eq!(dest, &format!("/{src}"), "{what} installs {src} elsewhere");
            assert_eq!(mode, repo_mode(&rootfs.join(src)), "{what}: mode of {src}");
        }
        for f in &files {
            assert!(
                installs.contains_key(f),
                "{what} does not install images/rootfs/{f}"
            );
        }
    }
    assert_eq!(br, yocto, "the two recipes install the overlay differently");
}

/// The users and groups a sysusers.d file makes: (user, supplementary groups).
fn sysusers(text: &str) -> Vec<(String, Vec<String>)> {
    let mut users: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["u", name, ..] => users.push((name.to_string(), Vec::new())),
            ["m", user, group] => users
                .iter_mut()
                .find(|(u, _)| u == user)
                .unwrap_or_else(|| panic!("m line for an unknown user: {line}"))
                .1
                .push(group.to_string()),
            ["g", ..] | [] => {}
            _ => panic!("a sysusers.d line this test does not know: {line}"),
        }
    }
    users
}

#[test]
fn recipes_make_the_users_sysusers_makes() {
    let dir = images().join("rootfs/usr/lib/sysusers.d");
    let br_users: String = files_ending(&images().join("buildroot/package"), ".mk")
        .iter()
        .flat_map(|mk| read(mk).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains("_USERS = "))
        .collect::<Vec<_>>()
        .join("\n");
    let yocto: String = files_ending(&images().join("yocto"), ".bb")
        .iter()
        .map(|bb| read(bb).replace("\\\n", " "))
        .collect();
    let mut n = 0;
    for conf in files_ending(&dir, ".conf") {
        for (user, groups) in sysusers(&read(&conf)) {
            n += 1;
            // Buildroot's makeusers line: name uid group gid password home shell groups comment.
            let line = br_users
                .lines()
                .find(|l| l.split_whitespace().nth(2) == Some(&user))
                .unwrap_or_else(|| panic!("no Buildroot _USERS line for {user}"));
            let fields: Vec<&str> = line
                .split(" = ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect();
            assert_eq!(fields[0], user, "{line}");
            let want = if groups.is_empty() {
                "-".to_string()
            } else {
                groups.join(",")
            };
            assert_eq!(fields[7], want, "Buildroot groups of {user}: {line}");
            // Yocto's useradd options end with the user's name.
            let param = yocto
                .lines()
                .find(|l| {
                    l.starts_with("USERADD_PARAM:") && l.trim_end().ends_with(&format!("{user}\""))
                })
                .unwrap_or_else(|| panic!("no Yocto USERADD_PARAM for {user}"));
            for g in &groups {
                assert!(
                    param.contains(&format!("--groups {g}")),
                    "{user} not in {g}: {param}"
                );
                assert!(
                    yocto.contains(&format!("GROUPADD_PARAM:${{PN}} = \"--system {g}\"")),
                    "the Yocto layer does not make group {g}"
                );
            }
        }
    }
    assert!(n >= 2, "sysusers.d makes {n} users");
}

/// The `CONFIG_X=y` options of the kernel fragment; fails on a line of another
/// shape.
fn fragment_options() -> Vec<String> {
    let path = images().join("kernel/tpm.cfg");
    let mut opts = Vec::new();
    for line in read(&path).lines() {
        // Comments, but `# CONFIG_X is not set` is a setting.
        if line.is_empty() || (line.starts_with('#') && !line.starts_with("# CONFIG_")) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            let name = rest
                .strip_suffix(" is not set")
                .unwrap_or_else(|| panic!("{line}"));
            assert!(is_symbol(name), "{line}");
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not an option: {line}"));
        let name = name
            .strip_prefix("CONFIG_")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            is_symbol(name) && matches!(value, "y" | "m"),
            "not CONFIG_X=y|m: {line}"
        );
        opts.push(format!("CONFIG_{name}"));
    }
    opts
}

fn is_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[test]
fn kernel_fragment_is_well_formed_used_by_both_recipes_and_enabled_in_debian() {
    let opts = fragment_options();
    for want in [
        "CONFIG_TCG_TPM",
        "CONFIG_TCG_TIS",
        "CONFIG_TCG_CRB",
        "CONFIG_TCG_TIS_SPI",
    ] {
        assert!(opts.iter().any(|o| o == want), "tpm.cfg lacks {want}");
    }
    // Yocto: the bbappend fetches tpm.cfg from images/kernel (for distributions
    // with the tpm or tpm2 feature).
    let append = images().join("yocto/recipes-kernel/linux/linux-yocto_%.bbappend");
    let text = read(&append);
    assert!(
        text.lines()
            .any(|l| l.starts_with("SRC_URI") && l.contains("'tpm tpm2', ' file://tpm.cfg'")),
        "{text}"
    );
    let extra = text
        .lines()
        .find_map(|l| l.strip_prefix("FILESEXTRAPATHS:prepend := \"${THISDIR}/"))
        .unwrap()
        .trim_end_matches(":\"");
    let dir = append.parent().unwrap().join(extra);
    assert!(dir.join("tpm.cfg").is_file(), "{}", dir.display());
    // Buildroot: the package help and the docs name it for
    // BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES.
    let help = read(&images().join("buildroot/package/tessera-agent/Config.in"));
    assert!(help.contains("images/kernel/tpm.cfg"), "{help}");
    let readme = read(&images().join("README.md"));
    assert!(
        readme.contains("BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES=\"$(BR2_EXTERNAL_TESSERA_PATH)/../kernel/tpm.cfg\""),
        "images/README.md does not show the fragment setting"
    );

    // Debian's kernel, as the systemd guest's cached root filesystem has it
    // (images/systemd-guest.sh checks the same on every run).
    let cache = std::env::var_os("TESSERA_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tessera_swtpm_tests::repo_root().join("target/images"));
    let boot = cache.join("systemd-rootfs/boot");
    let Some(config) = std::fs::read_dir(&boot).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("config-"))
        })
    }) else {
        eprintln!(
            "no cached Debian kernel configuration in {}: its check is left to images/systemd-guest.sh",
            boot.display()
        );
        return;
    };
    let text = read(&config);
    for opt in &opts {
        assert!(
            text.lines()
                .any(|l| l == format!("{opt}=y") || l == format!("{opt}=m")),
            "{opt} is not enabled in {}",
            config.display()
        );
    }
}

#[test]
fn buildroot_tree_follows_the_br2_external_layout() {
    let tree = images().join("buildroot");
    let desc = read(&tree.join("external.desc"));
    assert!(desc.lines().any(|l| l == "name: TESSERA"), "{desc}");
    let config = read(&tree.join("Config.in"));
    let mk = read(&tree.join("external.mk"));
    assert!(
        mk.contains("$(BR2_EXTERNAL_TESSERA_PATH)/package/*/*.mk"),
        "{mk}"
    );
    for pkg in ["tessera-agent", "tessera-server"] {
        let sourced = format!("source \"$BR2_EXTERNAL_TESSERA_PATH/package/{pkg}/Config.in\"");
        assert!(config.contains(&sourced), "Config.in does not source {pkg}");
        let dir = tree.join("package").join(pkg);
        let upper = pkg.to_uppercase().replace('-', "_");
        let cfg = read(&dir.join("Config.in"));
        assert!(
            cfg.starts_with(&format!("config BR2_PACKAGE_{upper}\n")),
            "{pkg}/Config.in"
        );
        assert!(
            cfg.contains(&format!("config BR2_PACKAGE_{upper}_BINARY\n")),
            "{pkg}/Config.in"
        );
        let text = read(&dir.join(format!("{pkg}.mk")));
        assert!(
            text.trim_end().ends_with("$(eval $(generic-package))"),
            "{pkg}.mk"
        );
        assert!(
            text.contains(&format!(
                "{upper}_BINARY = $(call qstrip,$(BR2_PACKAGE_{upper}_BINARY))"
            )),
            "{pkg}.mk"
        );
    }
}
