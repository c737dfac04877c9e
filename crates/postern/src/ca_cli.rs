//! `postern ca`: the forward proxy's interception CA.

use crate::creds::VaultLocation;
use crate::ExitCode;

#[derive(clap::Subcommand)]
pub enum CaCommand {
    /// Print the interception CA certificate (PEM) for client trust stores, creating the CA in
    /// <data_dir>/ca/ if it does not exist yet. The private key never leaves data_dir.
    Export {
        #[command(flatten)]
        location: VaultLocation,
    },
}

pub fn run(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Export { location } => {
            let data_dir = match location.data_dir("the interception CA") {
                Ok(dir) => dir,
                Err(code) => return code,
            };
            match postern_gateway::intercept::export_ca_pem(&data_dir) {
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
