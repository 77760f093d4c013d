"""Reading prepared datasets: schema (meta.json), item content store, streaming loader, batch type."""
