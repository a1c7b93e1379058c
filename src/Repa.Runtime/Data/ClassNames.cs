namespace Repa.Runtime.Data;

/// <summary>The class names of the datasets Repa knows by name, for labelling sample grids.</summary>
public static class ClassNames
{
    /// <summary>Fashion-MNIST's ten classes, in label order (Xiao et al. 2017).</summary>
    public static readonly IReadOnlyList<string> FashionMnist =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>MNIST's ten classes: the digit a label stands for.</summary>
    public static readonly IReadOnlyList<string> Mnist = [.. Enumerable.Range(0, 10).Select(d => d.ToString(System.Globalization.CultureInfo.InvariantCulture))];

    /// <summary>
    /// The names for a model of <paramref name="numClasses"/> classes trained on <paramref name="dataDir"/> (config.json's
    /// data_dir), recognised by the folder's name ("fashion-mnist", "fashion_mnist", "FashionMNIST", ... or "mnist"); null
    /// when the folder is not one of those or the class count differs, so callers fall back to class numbers.
    /// </summary>
    public static IReadOnlyList<string>? For(string? dataDir, int numClasses)
    {
        if (string.IsNullOrWhiteSpace(dataDir) || numClasses != 10) return null;
        string name = Path.GetFileName(dataDir.TrimEnd('/', '\\')).Replace("-", "").Replace("_", "").ToLowerInvariant();
        return name switch
        {
            "fashionmnist" => FashionMnist,
            "mnist" => Mnist,
            _ => null,
        };
    }
}
