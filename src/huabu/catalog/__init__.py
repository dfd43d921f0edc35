"""The model catalog: what models the library holds and what each one is (family, layout,
size), checkpoint headers, preprocessor names, and the infotext A1111 tools read and write.

Everything here is torch-free: dialects and API processes use it, and so does the engine.
"""
