//! `postern ca`: the forward proxy's interception CA.

use crate::creds::VaultLocation;
use crate::ExitCode;

#[derive(clap::Subcommand)]
pub enum CaCommand {
    /// Print the interception CA certificate (PEM) for client trust stores, creating the CA in
    /// <data_dir>/ca/ if it does not exist yet: with the config's `[proxy] intercept_ca_names`
    /// as its name constraints (not with --data-dir, which reads no config). The private key
    /// never leaves data_dir.
    Export {
        #[command(flatten)]
        location: VaultLocation,
    },
}

pub fn run(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Export { location } => {
            let (data_dir, names) = match location.data_dir_and_config("the interception CA") {
                Ok((dir, config)) => (
                    dir,
                    config
                        .map(|config| config.proxy.intercept_ca_names)
                        .unwrap_or_default(),
                ),
                Err(code) => return code,
            };
            match postern_gateway::intercept::export_ca_pem(&data_dir, &names) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::Ok
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::Failure
                }
            }
        }
    }
}
