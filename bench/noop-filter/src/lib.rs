//! A proxy-wasm HTTP filter that reads the `authorization` header and lets every request
//! through: what any wasm filter costs in Envoy before doing any work (the V8 boundary,
//! one context per request, one header read). Built only for wasm32-wasip1:
//! `cargo build -p noop-filter --target wasm32-wasip1 --profile wasm-release`.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;
    impl Context for Root {}
    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop;
    impl Context for Noop {}
    impl HttpContext for Noop {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            // The one read every auth filter makes; its value is not used.
            let _ = self.get_http_request_header_bytes("authorization");
            Action::Continue
        }
    }
}
