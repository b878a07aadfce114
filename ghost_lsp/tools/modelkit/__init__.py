"""Library code the model recipes call: tiny test models, export and quantization.

Heavy dependencies (torch, transformers, optimum) are imported inside functions only,
so importing this package stays as cheap as the serving path.
"""
