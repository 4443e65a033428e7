"""The Open Inference Protocol (KServe v2): its model catalogue, tensor codec, gRPC servicer
and HTTP/REST app. Each part only translates between the protocol and the model API; the
typed requests, limits, batching, metrics and errors are the native API's own."""
