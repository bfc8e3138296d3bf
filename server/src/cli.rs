//! The `tessera-server` command line: `run`, and the admin commands that talk to a
//! running server over its admin socket. Where spire-server has the same command,
//! the output follows it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tessera_core::duration::parse_duration;
use tessera_core::{RegistrationEntry, SpiffeId};
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_proto::types as tpb;
use tonic::transport::Channel;

use crate::config::DEFAULT_ADMIN_SOCKET;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-server",
    version,
    about = "Tessera server: a SPIFFE CA whose keys live in hardware"
)]
pub struct Cli {
    /// The admin socket of the running server.
    #[arg(long, global = true, env = "TESSERA_SERVER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket_path: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides a configuration value (repeatable), e.g. --set ca_ttl=2h.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Attested agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// X509-SVIDs minted directly.
    #[command(subcommand)]
    X509(X509Command),
    /// JWT-SVIDs minted directly.
    #[command(subcommand)]
    Jwt(JwtCommand),
    /// The upstream root CA (offline: needs the configuration, not a running server).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Checks that the server is up and can sign.
    Healthcheck {
        /// Print each component's state.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Creates the upstream root key (in the token for `pkcs11`) and its self-signed
    /// certificate, for the server's `[upstream_authority]`.
    Init {
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Lifetime of the root certificate.
        #[arg(long, value_parser = parse_duration, default_value = "3650d")]
        ttl: Duration,
        #[arg(long, default_value = "ec-p384")]
        key_type: tessera_core::key::KeyType,
        /// Replace an existing root (every agent then needs the new bundle).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Args)]
pub struct EntryFields {
    /// The SPIFFE ID the entry grants.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// The parent: an agent ID, or another entry's SPIFFE ID.
    #[arg(long, conflicts_with = "node")]
    parent_id: Option<String>,
    /// Makes a node alias: the parent is the server, selectors are node selectors.
    #[arg(long)]
    node: bool,
    /// A selector type:value (repeatable).
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// X509-SVID lifetime (e.g. 1h; default: the server's).
    #[arg(long, value_parser = parse_duration)]
    x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime (e.g. 5m; default: the server's).
    #[arg(long, value_parser = parse_duration)]
    jwt_svid_ttl: Option<Duration>,
    /// A DNS name for the X509-SVID (repeatable).
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// A trust domain whose bundle workloads also get (repeatable).
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    #[arg(long)]
    admin: Option<bool>,
    #[arg(long)]
    downstream: Option<bool>,
    /// A hint for workloads holding several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// Unix time after which the entry no longer applies.
    #[arg(long)]
    entry_expiry: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Creates an entry.
    Create {
        #[command(flatten)]
        fields: EntryFields,
        /// Choose the entry ID instead of letting the server pick one.
        #[arg(long)]
        entry_id: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Shows entries (all, or those matching the filters).
    Show {
        #[arg(long)]
        entry_id: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        /// Entries holding this selector (repeatable: all must be held).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Updates an entry: the given fields replace the stored ones.
    Update {
        #[arg(long)]
        entry_id: String,
        #[command(flatten)]
        fields: EntryFields,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes an entry.
    Delete {
        #[arg(long)]
        entry_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generates a one-time join token.
    Generate {
        /// Also create an entry with this SPIFFE ID for the agent that uses the token.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Token lifetime (default: the server's, 10m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Lists attested agents.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes an agent's record: it must attest again.
    Evict {
        #[arg(long)]
        spiffe_id: String,
    },
    /// Bans an agent: it can neither call the server nor attest again.
    Ban {
        #[arg(long)]
        spiffe_id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum BundleFormat {
    #[default]
    Pem,
    Jwks,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Prints the server's trust bundle.
    Show {
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Stores a federated trust domain's bundle.
    Set {
        /// The federated trust domain (or its spiffe:// ID).
        #[arg(long)]
        id: String,
        /// The bundle file.
        #[arg(long)]
        path: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Lists federated bundles.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Deletes a federated bundle.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Mints an X509-SVID (a new key is made locally).
    Mint {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Write svid.pem, key.pem and bundle.pem here instead of printing.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Mints a JWT-SVID.
    Mint {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
}

/// A CLI failure: the message printed after `Error: `.
#[derive(Debug)]
pub struct CliError(pub String);

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError(format!("{} ({:?})", s.message(), s.code()))
    }
}

fn secs(d: Option<Duration>) -> Result<u32, CliError> {
    d.map_or(Ok(0), |d| {
        u32::try_from(d.as_secs()).map_err(|_| CliError("duration too long".into()))
    })
}

async fn connect(path: &std::path::Path) -> Result<AdminClient<Channel>, CliError> {
    let ch = tessera_proto::unix_channel(path).await.map_err(|e| {
        CliError(format!(
            "cannot reach the server's admin socket {}: {e} (is the server running? set --socket-path)",
            path.display()
        ))
    })?;
    Ok(AdminClient::new(ch))
}

fn ttl_text(s: u32) -> String {
    if s == 0 {
        "default".into()
    } else {
        s.to_string()
    }
}

fn print_entry(e: &tpb::Entry) {
    println!("Entry ID         : {}", e.id);
    println!("SPIFFE ID        : {}", e.spiffe_id);
    println!("Parent ID        : {}", e.parent_id);
    println!("Revision         : {}", e.revision_number);
    println!("X509-SVID TTL    : {}", ttl_text(e.x509_svid_ttl));
    println!("JWT-SVID TTL     : {}", ttl_text(e.jwt_svid_ttl));
    if e.expires_at != 0 {
        println!("Expiration time  : {}", e.expires_at);
    }
    for s in &e.selectors {
        println!("Selector         : {s}");
    }
    for d in &e.dns_names {
        println!("DNS name         : {d}");
    }
    for f in &e.federates_with {
        println!("FederatesWith    : {f}");
    }
    if e.admin {
        println!("Admin            : true");
    }
    if e.downstream {
        println!("Downstream       : true");
    }
    if !e.hint.is_empty() {
        println!("Hint             : {}", e.hint);
    }
    println!();
}

fn entry_json(e: &tpb::Entry) -> Result<serde_json::Value, CliError> {
    let core: RegistrationEntry = crate::api::convert::entry_from_proto(e.clone())
        .map_err(|s| CliError(s.message().to_owned()))?;
    serde_json::to_value(core).map_err(|e| CliError(e.to_string()))
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

impl EntryFields {
    fn apply(
        self,
        e: &mut tpb::Entry,
        creating: bool,
        td_server: Option<String>,
    ) -> Result<(), CliError> {
        if let Some(s) = self.spiffe_id {
            e.spiffe_id = s;
        } else if creating {
            return Err(CliError("--spiffe-id is required".into()));
        }
        if self.node {
            e.parent_id = td_server.ok_or_else(|| CliError("--node needs --spiffe-id".into()))?;
        } else if let Some(p) = self.parent_id {
            e.parent_id = p;
        } else if creating {
            return Err(CliError("--parent-id (or --node) is required".into()));
        }
        if !self.selectors.is_empty() {
            e.selectors = self.selectors;
        } else if creating {
            return Err(CliError("at least one --selector is required".into()));
        }
        if self.x509_svid_ttl.is_some() {
            e.x509_svid_ttl = secs(self.x509_svid_ttl)?;
        }
        if self.jwt_svid_ttl.is_some() {
            e.jwt_svid_ttl = secs(self.jwt_svid_ttl)?;
        }
        if !self.dns_names.is_empty() {
            e.dns_names = self.dns_names;
        }
        if !self.federates_with.is_empty() {
            e.federates_with = self.federates_with;
        }
        if let Some(a) = self.admin {
            e.admin = a;
        }
        if let Some(d) = self.downstream {
            e.downstream = d;
        }
        if let Some(h) = self.hint {
            e.hint = h;
        }
        if let Some(x) = self.entry_expiry {
            e.expires_at = x;
        }
        Ok(())
    }

    /// `spiffe://<td>/spire/server` for `--node`, from the entry's own trust domain.
    fn server_parent(&self) -> Option<String> {
        let id = SpiffeId::new(self.spiffe_id.as_deref()?).ok()?;
        Some(crate::api::server_id(id.trust_domain()).to_string())
    }
}

fn print_bundle(b: &tpb::Bundle, format: BundleFormat) -> Result<(), CliError> {
    let core = crate::api::convert::bundle_from_proto(b.clone())
        .map_err(|s| CliError(s.message().to_owned()))?;
    match format {
        BundleFormat::Pem => print!("{}", core.x509_pem()),
        BundleFormat::Jwks => {
            let v: serde_json::Value =
                serde_json::from_str(&core.to_jwks()).map_err(|e| CliError(e.to_string()))?;
            print_json(&v);
        }
    }
    Ok(())
}

/// Runs one admin command.
pub async fn admin_command(socket: &std::path::Path, command: Command) -> Result<(), CliError> {
    let mut c = connect(socket).await?;
    match command {
        Command::Run { .. } | Command::Ca(_) => unreachable!("handled by main"),
        Command::Entry(EntryCommand::Create {
            fields,
            entry_id,
            output,
        }) => {
            let parent = fields.server_parent();
            let mut e = tpb::Entry {
                id: entry_id.unwrap_or_default(),
                ..Default::default()
            };
            fields.apply(&mut e, true, parent)?;
            let created = c
                .create_entry(pb::CreateEntryRequest { entry: Some(e) })
                .await?
                .into_inner();
            match output {
                Output::Pretty => print_entry(&created),
                Output::Json => print_json(&entry_json(&created)?),
            }
        }
        Command::Entry(EntryCommand::Show {
            entry_id,
            spiffe_id,
            parent_id,
            selectors,
            output,
        }) => {
            let entries = if let Some(id) = entry_id {
                vec![c.get_entry(pb::GetEntryRequest { id }).await?.into_inner()]
            } else {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let resp = c
                        .list_entries(pb::ListEntriesRequest {
                            by_spiffe_id: spiffe_id.clone().unwrap_or_default(),
                            by_parent_id: parent_id.clone().unwrap_or_default(),
                            by_selectors: selectors.clone(),
                            page_size: 1000,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    all.extend(resp.entries);
                    if resp.next_page_token.is_empty() {
                        break;
                    }
                    token = resp.next_page_token;
                }
                all
            };
            match output {
                Output::Pretty => {
                    println!(
                        "Found {} {}\n",
                        entries.len(),
                        if entries.len() == 1 {
                            "entry"
                        } else {
                            "entries"
                        }
                    );
                    entries.iter().for_each(print_entry);
                }
                Output::Json => {
                    let v: Result<Vec<_>, _> = entries.iter().map(entry_json).collect();
                    print_json(&serde_json::Value::Array(v?));
                }
            }
        }
        Command::Entry(EntryCommand::Update {
            entry_id,
            fields,
            output,
        }) => {
            let mut e = c
                .get_entry(pb::GetEntryRequest { id: entry_id })
                .await?
                .into_inner();
            let parent = fields.server_parent().or_else(|| {
                SpiffeId::new(&e.spiffe_id)
                    .ok()
                    .map(|id| crate::api::server_id(id.trust_domain()).to_string())
            });
            fields.apply(&mut e, false, parent)?;
            let updated = c
                .update_entry(pb::UpdateEntryRequest { entry: Some(e) })
                .await?
                .into_inner();
            match output {
                Output::Pretty => print_entry(&updated),
                Output::Json => print_json(&entry_json(&updated)?),
            }
        }
        Command::Entry(EntryCommand::Delete { entry_id }) => {
            c.delete_entry(pb::DeleteEntryRequest {
                id: entry_id.clone(),
            })
            .await?;
            println!("Deleted entry with ID: {entry_id}");
        }
        Command::Token(TokenCommand::Generate {
            spiffe_id,
            ttl,
            output,
        }) => {
            let t = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl_seconds: secs(ttl)?,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    token: String::new(),
                })
                .await?
                .into_inner();
            match output {
                Output::Pretty => println!("Token: {}", t.token),
                Output::Json => {
                    print_json(&serde_json::json!({"value": t.token, "expires_at": t.expires_at}))
                }
            }
        }
        Command::Agent(AgentCommand::List { output }) => {
            let agents = c
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            match output {
                Output::Pretty => {
                    if agents.is_empty() {
                        println!("No attested agents found");
                    } else {
                        println!(
                            "Found {} attested {}:\n",
                            agents.len(),
                            if agents.len() == 1 { "agent" } else { "agents" }
                        );
                    }
                    for a in &agents {
                        println!("SPIFFE ID         : {}", a.spiffe_id);
                        println!("Attestation type  : {}", a.attestation_type);
                        println!("Expiration time   : {}", a.x509_svid_expires_at);
                        println!("Serial number     : {}", a.x509_svid_serial);
                        println!("Can re-attest     : {}", a.can_reattest);
                        println!("Banned            : {}", a.banned);
                        for s in &a.selectors {
                            println!("Selector          : {s}");
                        }
                        println!();
                    }
                }
                Output::Json => {
                    let v: Vec<serde_json::Value> = agents
                        .iter()
                        .map(|a| {
                            serde_json::json!({
                                "spiffe_id": a.spiffe_id,
                                "attestation_type": a.attestation_type,
                                "x509_svid_serial": a.x509_svid_serial,
                                "x509_svid_expires_at": a.x509_svid_expires_at,
                                "selectors": a.selectors,
                                "banned": a.banned,
                                "can_reattest": a.can_reattest,
                            })
                        })
                        .collect();
                    print_json(&serde_json::Value::Array(v));
                }
            }
        }
        Command::Agent(AgentCommand::Evict { spiffe_id }) => {
            c.evict_agent(pb::AgentRequest { spiffe_id }).await?;
            println!("Agent evicted successfully");
        }
        Command::Agent(AgentCommand::Ban { spiffe_id }) => {
            c.ban_agent(pb::AgentRequest { spiffe_id }).await?;
            println!("Agent banned successfully");
        }
        Command::Bundle(BundleCommand::Show { format }) => {
            let b = c.get_bundle(pb::GetBundleRequest {}).await?.into_inner();
            print_bundle(&b, format)?;
        }
        Command::Bundle(BundleCommand::Set { id, path, format }) => {
            let td =
                tessera_core::TrustDomain::new(&id).map_err(|e| CliError(format!("--id: {e}")))?;
            let text = std::fs::read(&path)
                .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
            let bundle = match format {
                BundleFormat::Pem => tessera_core::Bundle::with_x509(
                    td,
                    tessera_core::x509::pem_certs(&text)
                        .map_err(|e| CliError(format!("{}: {e}", path.display())))?,
                ),
                BundleFormat::Jwks => tessera_core::Bundle::from_jwks(td, &text)
                    .map_err(|e| CliError(format!("{}: {e}", path.display())))?,
            };
            c.set_federated_bundle(pb::SetFederatedBundleRequest {
                bundle: Some(crate::api::convert::bundle_to_proto(&bundle)),
            })
            .await?;
            println!("Bundle set.");
        }
        Command::Bundle(BundleCommand::List { format }) => {
            let bundles = c
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await?
                .into_inner()
                .bundles;
            for b in &bundles {
                println!("****************************************");
                println!("* {}", b.trust_domain);
                println!("****************************************");
                print_bundle(b, format)?;
            }
        }
        Command::Bundle(BundleCommand::Delete { id }) => {
            c.delete_federated_bundle(pb::DeleteFederatedBundleRequest { trust_domain: id })
                .await?;
            println!("Bundle deleted.");
        }
        Command::X509(X509Command::Mint {
            spiffe_id,
            ttl,
            dns_names,
            write,
        }) => {
            let key = std::sync::Arc::new(
                tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256)
                    .map_err(|e| CliError(e.to_string()))?,
            );
            let dyn_key: std::sync::Arc<dyn tessera_core::key::Key> = key.clone();
            let csr =
                tessera_core::x509::build_csr(&dyn_key).map_err(|e| CliError(e.to_string()))?;
            let chain = c
                .mint_x509_svid(pb::MintX509SvidRequest {
                    spiffe_id,
                    csr,
                    ttl_seconds: secs(ttl)?,
                    dns_names,
                })
                .await?
                .into_inner()
                .cert_chain;
            let bundle = c.get_bundle(pb::GetBundleRequest {}).await?.into_inner();
            let svid_pem: String = chain
                .iter()
                .map(|d| tessera_core::x509::to_pem("CERTIFICATE", d))
                .collect();
            let key_pem = tessera_core::x509::to_pem("PRIVATE KEY", key.pkcs8_der());
            let bundle_pem: String = bundle
                .x509_authorities
                .iter()
                .map(|d| tessera_core::x509::to_pem("CERTIFICATE", d))
                .collect();
            match write {
                Some(dir) => {
                    tessera_core::fsutil::ensure_dir(&dir, 0o755)
                        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
                    for (name, data, mode) in [
                        ("svid.pem", svid_pem.as_bytes(), 0o644),
                        ("key.pem", key_pem.as_bytes(), 0o600),
                        ("bundle.pem", bundle_pem.as_bytes(), 0o644),
                    ] {
                        let p = dir.join(name);
                        tessera_core::fsutil::write_atomic(&p, data, mode)
                            .map_err(|e| CliError(format!("{}: {e}", p.display())))?;
                        println!("Wrote {}", p.display());
                    }
                }
                None => {
                    println!(
                        "X509-SVID:\n{svid_pem}\nPrivate key:\n{key_pem}\nRoot CAs:\n{bundle_pem}"
                    );
                }
            }
        }
        Command::Jwt(JwtCommand::Mint {
            spiffe_id,
            audience,
            ttl,
        }) => {
            let t = c
                .mint_jwt_svid(pb::MintJwtSvidRequest {
                    spiffe_id,
                    audience,
                    ttl_seconds: secs(ttl)?,
                })
                .await?
                .into_inner();
            println!("{}", t.token);
        }
        Command::Healthcheck { verbose } => {
            let h = c.health(pb::HealthRequest {}).await?.into_inner();
            if verbose {
                for d in &h.details {
                    println!("{d}");
                }
            }
            if h.ready {
                println!("Server is healthy.");
            } else {
                return Err(CliError(format!(
                    "server is unhealthy: {}",
                    h.details.join("; ")
                )));
            }
        }
    }
    Ok(())
}

/// `tessera-server ca init`.
pub fn ca_command(command: CaCommand) -> Result<(), CliError> {
    match command {
        CaCommand::Init {
            config,
            set,
            ttl,
            key_type,
            force,
        } => {
            let cfg = crate::config::ServerConfig::load(&config, &set)
                .map_err(|e| CliError(e.to_string()))?;
            let r = crate::upstream::init_root(&cfg, ttl, key_type, force)
                .map_err(|e| CliError(e.to_string()))?;
            println!("Root CA certificate written to {}", r.cert_path.display());
            println!("Subject          : {}", r.subject);
            println!("Valid until      : {}", r.not_after);
            println!("SHA-256          : {}", r.sha256);
            Ok(())
        }
    }
}
