//! `cargo xtask package`: Debian packages of both binaries, built with `dpkg-deb --build`
//! from trees staged here. No cargo-deb: it would be compiled from crates.io (minutes on
//! two cores) to do what `dpkg-deb`, which every Debian machine has, does with a staged
//! tree; the few files a package needs (control, conffiles, md5sums, maintainer scripts,
//! copyright, changelog) are written below, and lintian checks the result.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{cmd, ebpf, setup};

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Cargo profile whose binaries go into the packages (`release` or `dev`).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Package the binaries already built in this directory; nothing is built.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the `.deb` files go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not run lintian on the result.
    #[arg(long)]
    no_lintian: bool,
}

/// A file in a package: where it comes from, where it goes, its mode.
struct Item {
    src: Source,
    dest: &'static str,
    mode: u32,
}

enum Source {
    /// A file in the repository, relative to the workspace root.
    Repo(&'static str),
    /// A repository file with `(from, to)` replacements applied.
    RepoEdited(&'static str, &'static [(&'static str, &'static str)]),
    /// A built binary (stripped when staged).
    Binary(&'static str),
}

/// One binary package.
struct Spec {
    name: &'static str,
    summary: &'static str,
    /// The long description's lines (indented in the control file).
    description: &'static [&'static str],
    extra_depends: &'static str,
    recommends: &'static str,
    suggests: &'static str,
    unit: &'static str,
    items: &'static [Item],
    /// Maintainer scripts: `(name, repository file)`; `@UNIT@` becomes [`Spec::unit`].
    scripts: &'static [(&'static str, &'static str)],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "meshgate-coordinator",
        summary: "mesh network coordinator with highly available subnet gateways",
        description: &[
            "The control plane and relay of meshgate: it enrols nodes and devices,",
            "assigns Mesh IPs, holds the routes, elects the active replica of each",
            "highly available gateway node with epoch-fenced leases, relays the QUIC",
            "tunnel traffic and serves a REST API with a web console.",
        ],
        extra_depends: "systemd, init-system-helpers (>= 1.52)",
        recommends: "",
        suggests: "",
        unit: "meshgate-coordinator.service",
        items: &[
            Item {
                src: Source::Binary("meshgate-coordinator"),
                dest: "usr/bin/meshgate-coordinator",
                mode: 0o755,
            },
            Item {
                src: Source::Repo("packaging/meshgate-coordinator.service"),
                dest: "lib/systemd/system/meshgate-coordinator.service",
                mode: 0o644,
            },
            Item {
                src: Source::Repo("packaging/coordinator.env"),
                dest: "etc/meshgate/coordinator.env",
                mode: 0o644,
            },
            Item {
                src: Source::Repo("packaging/meshgate-coordinator.sysusers"),
                dest: "usr/lib/sysusers.d/meshgate-coordinator.conf",
                mode: 0o644,
            },
        ],
        scripts: &[
            ("postinst", "packaging/meshgate-coordinator.postinst"),
            ("prerm", "packaging/meshgate.prerm"),
        ],
    },
    Spec {
        name: "meshgate-agent",
        summary: "mesh network agent for gateway replicas and devices",
        description: &[
            "The agent of meshgate: a client device, or one replica of a highly",
            "available subnet gateway. It runs the QUIC tunnel to the coordinator, keeps",
            "the kernel's routes, rules and gateway address in step with its role, and",
            "loads an XDP program that classifies, hairpins and fences LAN traffic.",
        ],
        extra_depends: "init-system-helpers (>= 1.52)",
        recommends: "nftables",
        suggests: "bpftool",
        unit: "meshgate-agent.service",
        items: &[
            Item {
                src: Source::Binary("meshgate-agent"),
                dest: "usr/bin/meshgate-agent",
                mode: 0o755,
            },
            Item {
                // The unit in the agent crate is written for a hand install under
                // /usr/local; the package puts the binary where packages do.
                src: Source::RepoEdited(
                    "agent/systemd/meshgate-agent.service",
                    &[("/usr/local/bin/meshgate-agent", "/usr/bin/meshgate-agent")],
                ),
                dest: "lib/systemd/system/meshgate-agent.service",
                mode: 0o644,
            },
            Item {
                // 0600: an administrator may put MESHGATE_TOKEN in it.
                src: Source::Repo("agent/systemd/agent.env.example"),
                dest: "etc/meshgate/agent.env",
                mode: 0o600,
            },
        ],
        scripts: &[("prerm", "packaging/meshgate.prerm")],
    },
];

pub fn run(args: &PackageArgs) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let dir_name = if args.profile == "dev" {
        "debug"
    } else {
        &args.profile
    };
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join(dir_name));
    if args.bin_dir.is_none() {
        setup::run()?;
        ebpf::build()?;
        cmd::step(&format!("building the binaries ({} profile)", args.profile));
        cmd::run(
            cmd::clean_cargo(None)
                .current_dir(&root)
                .args(["build", "--profile", &args.profile])
                .args(["-p", "meshgate-agent", "-p", "meshgate-coordinator"]),
        )?;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/debian"));
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg is missing: packages are built on Debian")?;
    let version = env!("CARGO_PKG_VERSION");
    let mut debs = Vec::new();
    for spec in SPECS {
        cmd::step(&format!("packaging {}", spec.name));
        let tree = out.join("build/debian").join(spec.name);
        if tree.exists() {
            fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
        }
        stage(spec, &root, &bin_dir, &tree)?;
        control(spec, &out.join("build"), &tree, version, arch.trim())?;
        let deb = out.join(format!("{}_{version}_{}.deb", spec.name, arch.trim()));
        cmd::run(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&tree)
                .arg(&deb),
        )?;
        debs.push(deb);
    }
    if !args.no_lintian {
        cmd::step("lintian");
        if !setup::has_program("lintian") {
            bail!("lintian is missing: run `cargo xtask setup`");
        }
        // Overridden tags are listed in each package's lintian overrides and explained
        // in the README; any other warning or error fails the build.
        cmd::run(
            Command::new("lintian")
                .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
                .args(&debs),
        )?;
    }
    for deb in &debs {
        println!("{}", deb.display());
    }
    Ok(())
}

/// Writes the package's files into `tree`, with their modes, plus the documentation
/// Debian requires and the lintian overrides.
fn stage(spec: &Spec, root: &Path, bin_dir: &Path, tree: &Path) -> anyhow::Result<()> {
    for item in spec.items {
        let dest = tree.join(item.dest);
        mkdirs(
            tree,
            dest.parent().expect("every destination has a directory"),
        )?;
        match &item.src {
            Source::Repo(path) => copy(&root.join(path), &dest)?,
            Source::RepoEdited(path, edits) => {
                let mut text = read(&root.join(path))?;
                for (from, to) in *edits {
                    anyhow::ensure!(text.contains(from), "{path} no longer contains {from:?}");
                    text = text.replace(from, to);
                }
                write(&dest, &text)?;
            }
            Source::Binary(name) => {
                let built = bin_dir.join(name);
                anyhow::ensure!(built.is_file(), "{} is not built", built.display());
                cmd::run(
                    Command::new("strip")
                        .args(["--strip-unneeded", "--remove-section=.comment", "-o"])
                        .arg(&dest)
                        .arg(&built),
                )?;
            }
        }
        chmod(&dest, item.mode)?;
    }
    let doc = tree.join("usr/share/doc").join(spec.name);
    mkdirs(tree, &doc)?;
    copy(&root.join("packaging/copyright"), &doc.join("copyright"))?;
    chmod(&doc.join("copyright"), 0o644)?;
    // A native package: its changelog is changelog.gz, compressed reproducibly (-n).
    copy(&root.join("packaging/changelog"), &doc.join("changelog"))?;
    cmd::run(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(doc.join("changelog")),
    )?;
    chmod(&doc.join("changelog.gz"), 0o644)?;
    let overrides = root.join(format!("packaging/{}.lintian-overrides", spec.name));
    if overrides.is_file() {
        let dir = tree.join("usr/share/lintian/overrides");
        mkdirs(tree, &dir)?;
        copy(&overrides, &dir.join(spec.name))?;
        chmod(&dir.join(spec.name), 0o644)?;
    }
    Ok(())
}

/// Writes `DEBIAN/`: control, conffiles, md5sums and the maintainer scripts.
fn control(
    spec: &Spec,
    build: &Path,
    tree: &Path,
    version: &str,
    arch: &str,
) -> anyhow::Result<()> {
    let debian = tree.join("DEBIAN");
    mkdirs(tree, &debian)?;
    let depends = shlib_depends(spec, build)?;
    let size_kib = installed_size_kib(tree)?;
    let mut control = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: meshgate maintainers <maintainers@meshgate.invalid>\n\
         Installed-Size: {size_kib}\nDepends: {depends}, {}\n",
        spec.name, spec.extra_depends
    );
    for (field, value) in [("Recommends", spec.recommends), ("Suggests", spec.suggests)] {
        if !value.is_empty() {
            control.push_str(&format!("{field}: {value}\n"));
        }
    }
    control.push_str(&format!(
        "Section: net\nPriority: optional\nHomepage: https://github.com/meshgate/meshgate\n\
         Description: {}\n {}\n",
        spec.summary,
        spec.description.join("\n ")
    ));
    write(&debian.join("control"), &control)?;
    let conffiles: String = spec
        .items
        .iter()
        .filter(|i| i.dest.starts_with("etc/"))
        .map(|i| format!("/{}\n", i.dest))
        .collect();
    write(&debian.join("conffiles"), &conffiles)?;
    for (name, path) in spec.scripts {
        let text = read(&cmd::workspace_root().join(path))?.replace("@UNIT@", spec.unit);
        write(&debian.join(name), &text)?;
        chmod(&debian.join(name), 0o755)?;
    }
    let sums = cmd::output(Command::new("sh").current_dir(tree).args([
        "-c",
        "find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | LC_ALL=C sort -z | xargs -0r md5sum",
    ]))
    .context("md5sum failed")?;
    write(&debian.join("md5sums"), &sums)?;
    for f in ["control", "conffiles", "md5sums"] {
        chmod(&debian.join(f), 0o644)?;
    }
    Ok(())
}

/// The shared-library dependencies of the package's binaries, from `dpkg-shlibdeps`
/// (which wants to run next to a `debian/control`).
fn shlib_depends(spec: &Spec, build: &Path) -> anyhow::Result<String> {
    write(
        &build.join("debian/control"),
        "Source: meshgate\n\nPackage: meshgate\nArchitecture: any\n",
    )?;
    let binaries: Vec<String> = spec
        .items
        .iter()
        .filter(|i| matches!(i.src, Source::Binary(_)))
        .map(|i| format!("debian/{}/{}", spec.name, i.dest))
        .collect();
    let out = cmd::output(
        Command::new("dpkg-shlibdeps")
            .current_dir(build)
            .args(["-O", "-e"])
            .args(&binaries),
    )
    .context("dpkg-shlibdeps failed: is dpkg-dev installed (`cargo xtask setup`)?")?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

fn installed_size_kib(tree: &Path) -> anyhow::Result<u64> {
    let out = cmd::output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(tree),
    )
    .context("du failed")?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// Creates `dir` and its parents below `tree`, each 0755 whatever the umask.
fn mkdirs(tree: &Path, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for d in dir.ancestors().take_while(|d| d.starts_with(tree)) {
        chmod(d, 0o755)?;
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
