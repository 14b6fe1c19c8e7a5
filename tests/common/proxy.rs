//! A TCP proxy on loopback that a test can cut and restore, to make a real server unreachable
//! for a while (the fault a real server cannot be asked to produce on its own).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    /// Forwards a new loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (cut, cuts) = watch::channel(0u64);
        let (o, g) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(client); // refused while cut
                    continue;
                }
                let mut cuts = cuts.clone();
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = async { while cuts.changed().await.is_ok() && *cuts.borrow() == born {} } => {}
                    }
                });
            }
        });
        Proxy {
            port,
            open,
            cut,
            generation,
        }
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.cut.send(next);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
