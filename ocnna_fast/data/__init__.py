"""Stage 0, the images: the shipped and fetched data sets (``local``), where
they are looked for (``places``), downloads on request (``fetch``), images in
memory (``tensorimages``), in an ImageNet-layout folder (``imagefolder``) or
from a user's ``DataLoader`` (``loader``),
and the top-1 accuracy every stage is measured by (``evaluation``).
"""
